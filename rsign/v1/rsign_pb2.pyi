from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HashAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HASH_ALGORITHM_UNSPECIFIED: _ClassVar[HashAlgorithm]
    SHA256: _ClassVar[HashAlgorithm]
    SHA384: _ClassVar[HashAlgorithm]
    SHA512: _ClassVar[HashAlgorithm]

class SignatureScheme(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNATURE_SCHEME_UNSPECIFIED: _ClassVar[SignatureScheme]
    RSA_PKCS1_V15: _ClassVar[SignatureScheme]
    RSA_PSS: _ClassVar[SignatureScheme]
    ECDSA: _ClassVar[SignatureScheme]
HASH_ALGORITHM_UNSPECIFIED: HashAlgorithm
SHA256: HashAlgorithm
SHA384: HashAlgorithm
SHA512: HashAlgorithm
SIGNATURE_SCHEME_UNSPECIFIED: SignatureScheme
RSA_PKCS1_V15: SignatureScheme
RSA_PSS: SignatureScheme
ECDSA: SignatureScheme

class LoginRequest(_message.Message):
    __slots__ = ("user_id", "pin", "otp")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    OTP_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    pin: str
    otp: str
    def __init__(self, user_id: _Optional[str] = ..., pin: _Optional[str] = ..., otp: _Optional[str] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ("session_token", "expires_at")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    expires_at: int
    def __init__(self, session_token: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LogoutResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Credential(_message.Message):
    __slots__ = ("credential_id", "holder_user_id", "agency", "key_algorithm", "status", "key_version", "certificates", "signature_algorithm_oids", "multisign")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    KEY_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_ALGORITHM_OIDS_FIELD_NUMBER: _ClassVar[int]
    MULTISIGN_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    holder_user_id: str
    agency: str
    key_algorithm: str
    status: str
    key_version: int
    certificates: _containers.RepeatedScalarFieldContainer[bytes]
    signature_algorithm_oids: _containers.RepeatedScalarFieldContainer[str]
    multisign: int
    def __init__(self, credential_id: _Optional[str] = ..., holder_user_id: _Optional[str] = ..., agency: _Optional[str] = ..., key_algorithm: _Optional[str] = ..., status: _Optional[str] = ..., key_version: _Optional[int] = ..., certificates: _Optional[_Iterable[bytes]] = ..., signature_algorithm_oids: _Optional[_Iterable[str]] = ..., multisign: _Optional[int] = ...) -> None: ...

class ListCredentialsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCredentialsResponse(_message.Message):
    __slots__ = ("credentials",)
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    def __init__(self, credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ...) -> None: ...

class GetCredentialRequest(_message.Message):
    __slots__ = ("credential_id",)
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    def __init__(self, credential_id: _Optional[str] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("credential_id", "hash_algorithm", "hashes", "otp")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    OTP_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    hash_algorithm: HashAlgorithm
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    otp: str
    def __init__(self, credential_id: _Optional[str] = ..., hash_algorithm: _Optional[_Union[HashAlgorithm, str]] = ..., hashes: _Optional[_Iterable[bytes]] = ..., otp: _Optional[str] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("sad", "expires_at", "key_version")
    SAD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    sad: str
    expires_at: int
    key_version: int
    def __init__(self, sad: _Optional[str] = ..., expires_at: _Optional[int] = ..., key_version: _Optional[int] = ...) -> None: ...

class SignHashRequest(_message.Message):
    __slots__ = ("credential_id", "sad", "hash_algorithm", "signature_scheme", "hashes")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    SAD_FIELD_NUMBER: _ClassVar[int]
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_SCHEME_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    sad: str
    hash_algorithm: HashAlgorithm
    signature_scheme: SignatureScheme
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, credential_id: _Optional[str] = ..., sad: _Optional[str] = ..., hash_algorithm: _Optional[_Union[HashAlgorithm, str]] = ..., signature_scheme: _Optional[_Union[SignatureScheme, str]] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SignHashResponse(_message.Message):
    __slots__ = ("signatures", "key_version")
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    signatures: _containers.RepeatedScalarFieldContainer[bytes]
    key_version: int
    def __init__(self, signatures: _Optional[_Iterable[bytes]] = ..., key_version: _Optional[int] = ...) -> None: ...

class SignHashStreamRequest(_message.Message):
    __slots__ = ("credential_id", "sad", "hash_algorithm", "signature_scheme", "hashes")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    SAD_FIELD_NUMBER: _ClassVar[int]
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_SCHEME_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    sad: str
    hash_algorithm: HashAlgorithm
    signature_scheme: SignatureScheme
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, credential_id: _Optional[str] = ..., sad: _Optional[str] = ..., hash_algorithm: _Optional[_Union[HashAlgorithm, str]] = ..., signature_scheme: _Optional[_Union[SignatureScheme, str]] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SignHashStreamResponse(_message.Message):
    __slots__ = ("offset", "signatures", "errors", "key_version")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    offset: int
    signatures: _containers.RepeatedScalarFieldContainer[bytes]
    errors: _containers.RepeatedCompositeFieldContainer[ItemError]
    key_version: int
    def __init__(self, offset: _Optional[int] = ..., signatures: _Optional[_Iterable[bytes]] = ..., errors: _Optional[_Iterable[_Union[ItemError, _Mapping]]] = ..., key_version: _Optional[int] = ...) -> None: ...
