from rsign.cli.main import main

main()
