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
    __slots__ = ("credential_id", "holder_user_id", "agency", "key_algorithm", "status", "key_version", "certificates", "signature_algorithm_oids", "multisign", "kind", "not_after", "status_reason")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    KEY_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_ALGORITHM_OIDS_FIELD_NUMBER: _ClassVar[int]
    MULTISIGN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    holder_user_id: str
    agency: str
    key_algorithm: str
    status: str
    key_version: int
    certificates: _containers.RepeatedScalarFieldContainer[bytes]
    signature_algorithm_oids: _containers.RepeatedScalarFieldContainer[str]
    multisign: int
    kind: str
    not_after: int
    status_reason: str
    def __init__(self, credential_id: _Optional[str] = ..., holder_user_id: _Optional[str] = ..., agency: _Optional[str] = ..., key_algorithm: _Optional[str] = ..., status: _Optional[str] = ..., key_version: _Optional[int] = ..., certificates: _Optional[_Iterable[bytes]] = ..., signature_algorithm_oids: _Optional[_Iterable[str]] = ..., multisign: _Optional[int] = ..., kind: _Optional[str] = ..., not_after: _Optional[int] = ..., status_reason: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("credential_id", "hash_algorithm", "hashes", "otp", "passkey", "labels", "description")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    OTP_FIELD_NUMBER: _ClassVar[int]
    PASSKEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    hash_algorithm: HashAlgorithm
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    otp: str
    passkey: bool
    labels: _containers.RepeatedScalarFieldContainer[str]
    description: str
    def __init__(self, credential_id: _Optional[str] = ..., hash_algorithm: _Optional[_Union[HashAlgorithm, str]] = ..., hashes: _Optional[_Iterable[bytes]] = ..., otp: _Optional[str] = ..., passkey: _Optional[bool] = ..., labels: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("sad", "expires_at", "key_version", "handle", "approval_path")
    SAD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_PATH_FIELD_NUMBER: _ClassVar[int]
    sad: str
    expires_at: int
    key_version: int
    handle: str
    approval_path: str
    def __init__(self, sad: _Optional[str] = ..., expires_at: _Optional[int] = ..., key_version: _Optional[int] = ..., handle: _Optional[str] = ..., approval_path: _Optional[str] = ...) -> None: ...

class AuthorizeCheckRequest(_message.Message):
    __slots__ = ("handle", "wait_seconds")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    handle: str
    wait_seconds: int
    def __init__(self, handle: _Optional[str] = ..., wait_seconds: _Optional[int] = ...) -> None: ...

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

class EventFilter(_message.Message):
    __slots__ = ("from_time", "to_time", "user_id", "credential_id", "agency", "action", "result")
    FROM_TIME_FIELD_NUMBER: _ClassVar[int]
    TO_TIME_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    from_time: int
    to_time: int
    user_id: str
    credential_id: str
    agency: str
    action: str
    result: str
    def __init__(self, from_time: _Optional[int] = ..., to_time: _Optional[int] = ..., user_id: _Optional[str] = ..., credential_id: _Optional[str] = ..., agency: _Optional[str] = ..., action: _Optional[str] = ..., result: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("seq", "time", "actor", "agency", "action", "result", "credential_id", "key_version", "digest", "reason", "request_id", "client", "details_json", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: str
    actor: str
    agency: str
    action: str
    result: str
    credential_id: str
    key_version: int
    digest: str
    reason: str
    request_id: str
    client: str
    details_json: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[str] = ..., actor: _Optional[str] = ..., agency: _Optional[str] = ..., action: _Optional[str] = ..., result: _Optional[str] = ..., credential_id: _Optional[str] = ..., key_version: _Optional[int] = ..., digest: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., client: _Optional[str] = ..., details_json: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: EventFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[EventFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportEventsRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: EventFilter
    def __init__(self, filter: _Optional[_Union[EventFilter, _Mapping]] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class VerifyLogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyLogResponse(_message.Message):
    __slots__ = ("ok", "records", "head_seq", "bad_seq", "problem", "checkpoints", "last_checkpoint_seq")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_SEQ_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    head_seq: int
    bad_seq: int
    problem: str
    checkpoints: int
    last_checkpoint_seq: int
    def __init__(self, ok: _Optional[bool] = ..., records: _Optional[int] = ..., head_seq: _Optional[int] = ..., bad_seq: _Optional[int] = ..., problem: _Optional[str] = ..., checkpoints: _Optional[int] = ..., last_checkpoint_seq: _Optional[int] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("user_id", "name", "agency", "role", "status", "locked", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    name: str
    agency: str
    role: str
    status: str
    locked: bool
    scope: str
    def __init__(self, user_id: _Optional[str] = ..., name: _Optional[str] = ..., agency: _Optional[str] = ..., role: _Optional[str] = ..., status: _Optional[str] = ..., locked: _Optional[bool] = ..., scope: _Optional[str] = ...) -> None: ...

class EnrolUserRequest(_message.Message):
    __slots__ = ("user_id", "name", "agency", "pin", "role", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    name: str
    agency: str
    pin: str
    role: str
    scope: str
    def __init__(self, user_id: _Optional[str] = ..., name: _Optional[str] = ..., agency: _Optional[str] = ..., pin: _Optional[str] = ..., role: _Optional[str] = ..., scope: _Optional[str] = ...) -> None: ...

class EnrolUserResponse(_message.Message):
    __slots__ = ("user_id", "otpauth_uri")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OTPAUTH_URI_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    otpauth_uri: str
    def __init__(self, user_id: _Optional[str] = ..., otpauth_uri: _Optional[str] = ...) -> None: ...

class UserActionRequest(_message.Message):
    __slots__ = ("user_id", "reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    reason: str
    def __init__(self, user_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class MoveUserRequest(_message.Message):
    __slots__ = ("user_id", "new_agency")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_AGENCY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    new_agency: str
    def __init__(self, user_id: _Optional[str] = ..., new_agency: _Optional[str] = ...) -> None: ...

class MoveUserResponse(_message.Message):
    __slots__ = ("user", "revoked_credentials")
    USER_FIELD_NUMBER: _ClassVar[int]
    REVOKED_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    user: User
    revoked_credentials: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., revoked_credentials: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchUsersRequest(_message.Message):
    __slots__ = ("agency", "name", "status", "limit")
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    agency: str
    name: str
    status: str
    limit: int
    def __init__(self, agency: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class SearchUsersResponse(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ...) -> None: ...

class GenerateKeyRequest(_message.Message):
    __slots__ = ("credential_id", "algorithm", "holder_user_id", "multisign", "seal_agency", "seal_user_ids")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    HOLDER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    MULTISIGN_FIELD_NUMBER: _ClassVar[int]
    SEAL_AGENCY_FIELD_NUMBER: _ClassVar[int]
    SEAL_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    algorithm: str
    holder_user_id: str
    multisign: int
    seal_agency: str
    seal_user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, credential_id: _Optional[str] = ..., algorithm: _Optional[str] = ..., holder_user_id: _Optional[str] = ..., multisign: _Optional[int] = ..., seal_agency: _Optional[str] = ..., seal_user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CredentialRequest(_message.Message):
    __slots__ = ("credential_id", "reason")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    reason: str
    def __init__(self, credential_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CsrResponse(_message.Message):
    __slots__ = ("pem",)
    PEM_FIELD_NUMBER: _ClassVar[int]
    pem: str
    def __init__(self, pem: _Optional[str] = ...) -> None: ...

class ImportCertificateRequest(_message.Message):
    __slots__ = ("credential_id", "certificate_chain")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    certificate_chain: bytes
    def __init__(self, credential_id: _Optional[str] = ..., certificate_chain: _Optional[bytes] = ...) -> None: ...

class RevokeCredentialRequest(_message.Message):
    __slots__ = ("credential_id", "reason")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    reason: str
    def __init__(self, credential_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DestroyCredentialResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class SetSealUsersRequest(_message.Message):
    __slots__ = ("credential_id", "user_ids")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, credential_id: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class KeyVersion(_message.Message):
    __slots__ = ("version", "status", "certificates")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    version: int
    status: str
    certificates: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, version: _Optional[int] = ..., status: _Optional[str] = ..., certificates: _Optional[_Iterable[bytes]] = ...) -> None: ...

class KeyHistoryResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[KeyVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[KeyVersion, _Mapping]]] = ...) -> None: ...

class SearchCredentialsRequest(_message.Message):
    __slots__ = ("agency", "holder_name", "status", "expires_within_days", "limit")
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    HOLDER_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_WITHIN_DAYS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    agency: str
    holder_name: str
    status: str
    expires_within_days: int
    limit: int
    def __init__(self, agency: _Optional[str] = ..., holder_name: _Optional[str] = ..., status: _Optional[str] = ..., expires_within_days: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class SearchCredentialsResponse(_message.Message):
    __slots__ = ("credentials",)
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    def __init__(self, credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ...) -> None: ...
