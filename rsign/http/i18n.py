"""The pages' words: Vietnamese by default (the officials' language), English on request
(``?lang=en``, or an Accept-Language that prefers English over Vietnamese)."""

from __future__ import annotations

from starlette.requests import Request

DEFAULT = "vi"

TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "approve_title": "Phê duyệt ký số",
        "intro": "Phần mềm ký yêu cầu ông/bà phê duyệt việc ký các văn bản dưới đây bằng khóa ký số của mình.",
        "official": "Người ký",
        "credential": "Chứng thư số",
        "key_version": "Phiên bản khóa",
        "documents": "Số văn bản",
        "labels": "Văn bản",
        "no_label": "(không có tên)",
        "hash_alg": "Thuật toán băm",
        "expires": "Hết hạn sau",
        "seconds": "giây",
        "approve_button": "Phê duyệt bằng passkey",
        "approved": "Đã phê duyệt. Phần mềm ký sẽ tiếp tục ký các văn bản.",
        "state_approved": "Yêu cầu này đã được phê duyệt.",
        "state_expired": "Yêu cầu này đã hết hạn; hãy tạo yêu cầu mới từ phần mềm ký.",
        "working": "Đang chờ xác thực trên thiết bị…",
        "failed": "Không phê duyệt được",
        "commit_note": (
            "Passkey chỉ phê duyệt đúng các văn bản này: thay đổi một văn bản thì phê duyệt không còn giá trị."
        ),
        "enrol_title": "Đăng ký passkey",
        "enrol_intro": (
            "Đăng nhập bằng mã PIN và mã xác thực một lần, rồi đăng ký passkey trên điện thoại hoặc máy tính."
        ),
        "user_id": "Tên đăng nhập",
        "pin": "Mã PIN",
        "otp": "Mã xác thực một lần (TOTP)",
        "device_label": "Tên thiết bị",
        "enrol_button": "Đăng ký passkey",
        "enrolled": "Đã đăng ký passkey. Từ nay ông/bà có thể phê duyệt ký số bằng passkey này.",
        "other_lang": "English",
        "other_code": "en",
    },
    "en": {
        "approve_title": "Approve signing",
        "intro": "The signing software asks you to approve signing the documents below with your signing key.",
        "official": "Signer",
        "credential": "Credential",
        "key_version": "Key version",
        "documents": "Documents",
        "labels": "Documents",
        "no_label": "(no label)",
        "hash_alg": "Hash algorithm",
        "expires": "Expires in",
        "seconds": "seconds",
        "approve_button": "Approve with passkey",
        "approved": "Approved. The signing software will now sign the documents.",
        "state_approved": "This request has already been approved.",
        "state_expired": "This request has expired; start a new one from the signing software.",
        "working": "Waiting for your device…",
        "failed": "Approval failed",
        "commit_note": "The passkey approves exactly these documents: if one changes, the approval is void.",
        "enrol_title": "Enrol a passkey",
        "enrol_intro": "Log in with your PIN and one-time code, then enrol a passkey on your phone or computer.",
        "user_id": "User id",
        "pin": "PIN",
        "otp": "One-time code (TOTP)",
        "device_label": "Device name",
        "enrol_button": "Enrol passkey",
        "enrolled": "Passkey enrolled. You can now approve signing with it.",
        "other_lang": "Tiếng Việt",
        "other_code": "vi",
    },
}


def language(request: Request) -> str:
    asked = request.query_params.get("lang", "")
    if asked in TEXT:
        return asked
    # The first of vi/en in the caller's order of preference (q-values); Vietnamese otherwise.
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(request.headers.get("accept-language", "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        base = tag.strip().lower().split("-")[0]
        if base in TEXT and q > 0:
            ranked.append((-q, i, base))
    return min(ranked)[2] if ranked else DEFAULT
