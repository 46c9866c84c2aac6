//! A refusal of an operator command (`rewind`, `accept-topic-reset`): nothing was written, and
//! running the same command again cannot help; the message says what to change. The CLI maps it
//! to the class "operator needed" (exit 3), not "transient" (exit 1, "restarting may help").

/// An operator command's refusal, with what to do instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Returns `Err(Refused(format!(...)))` from the enclosing function (an `anyhow::Result`).
#[macro_export]
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err($crate::refusal::Refused(format!($($arg)*)).into())
    };
}
