//! Pure decisions: which per-setting code an SNMP outcome earns, and whether it is
//! worth retrying. Table-tested; no I/O.

use crate::snmp::{ErrorStatus, SnmpError, SnmpValue};
use platen_protocol::Code;

/// What an SNMP error means for one setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub code: Code,
    /// Worth another attempt after a backoff (transient printer trouble).
    pub retryable: bool,
    /// The printer is not answering: skip its remaining settings with the same code.
    pub unreachable: bool,
}

const fn v(code: Code, retryable: bool, unreachable: bool) -> Verdict {
    Verdict {
        code,
        retryable,
        unreachable,
    }
}

/// Classify an error from a SET or GET.
pub fn classify(e: &SnmpError) -> Verdict {
    use ErrorStatus as S;
    match e {
        SnmpError::Timeout { .. } | SnmpError::Network(_) => v(Code::Unreachable, false, true),
        // Wrong SNMPv3 credentials or keys: not permitted, and retrying will not help.
        SnmpError::Security(_) => v(Code::NotWritable, false, false),
        SnmpError::Status { status, .. } => match status {
            S::WrongValue
            | S::BadValue
            | S::WrongType
            | S::WrongLength
            | S::WrongEncoding
            | S::InconsistentValue
            | S::InconsistentName => v(Code::ValueRejected, false, false),
            S::NotWritable | S::ReadOnly | S::NoAccess | S::AuthorizationError | S::NoCreation => {
                v(Code::NotWritable, false, false)
            }
            S::NoSuchName => v(Code::NotSupported, false, false),
            S::GenErr | S::ResourceUnavailable => v(Code::AgentError, true, false),
            S::CommitFailed | S::UndoFailed | S::TooBig | S::Other(_) => {
                v(Code::AgentError, false, false)
            }
        },
        SnmpError::Malformed(_) | SnmpError::Other(_) => v(Code::AgentError, false, false),
    }
}

/// The code for an exception value (noSuchObject/noSuchInstance/endOfMibView) in a
/// response varbind, if it is one. Some agents (snmpsim) answer a failed SET with
/// error-status noError and such a varbind, so this is checked on SETs too.
pub fn exception_code(value: &SnmpValue) -> Option<Code> {
    value.is_exception().then_some(Code::NotSupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_table() {
        use ErrorStatus as S;
        let st = |status| SnmpError::Status { status, index: 1 };
        let cases: Vec<(SnmpError, Code, bool, bool)> = vec![
            (
                SnmpError::Timeout {
                    target: "t".into(),
                    retries: 2,
                },
                Code::Unreachable,
                false,
                true,
            ),
            (
                SnmpError::Network("refused".into()),
                Code::Unreachable,
                false,
                true,
            ),
            (st(S::WrongValue), Code::ValueRejected, false, false),
            (st(S::BadValue), Code::ValueRejected, false, false),
            (st(S::WrongType), Code::ValueRejected, false, false),
            (st(S::WrongLength), Code::ValueRejected, false, false),
            (st(S::InconsistentValue), Code::ValueRejected, false, false),
            (st(S::NotWritable), Code::NotWritable, false, false),
            (st(S::ReadOnly), Code::NotWritable, false, false),
            (st(S::NoAccess), Code::NotWritable, false, false),
            (st(S::AuthorizationError), Code::NotWritable, false, false),
            (st(S::NoCreation), Code::NotWritable, false, false),
            (st(S::NoSuchName), Code::NotSupported, false, false),
            (st(S::GenErr), Code::AgentError, true, false),
            (st(S::ResourceUnavailable), Code::AgentError, true, false),
            (st(S::CommitFailed), Code::AgentError, false, false),
            (st(S::TooBig), Code::AgentError, false, false),
            (st(S::Other(99)), Code::AgentError, false, false),
            (
                SnmpError::Malformed("x".into()),
                Code::AgentError,
                false,
                false,
            ),
        ];
        for (e, code, retryable, unreachable) in cases {
            assert_eq!(
                classify(&e),
                Verdict {
                    code,
                    retryable,
                    unreachable
                },
                "{e:?}"
            );
        }
    }

    #[test]
    fn exceptions_are_not_supported() {
        assert_eq!(
            exception_code(&SnmpValue::NoSuchObject),
            Some(Code::NotSupported)
        );
        assert_eq!(
            exception_code(&SnmpValue::NoSuchInstance),
            Some(Code::NotSupported)
        );
        assert_eq!(
            exception_code(&SnmpValue::EndOfMibView),
            Some(Code::NotSupported)
        );
        assert_eq!(exception_code(&SnmpValue::Integer(3)), None);
        assert_eq!(exception_code(&SnmpValue::Null), None);
    }
}
