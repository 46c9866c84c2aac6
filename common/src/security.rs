//! Authentication and TLS failures of a Kafka client, made visible.
//!
//! librdkafka reports a refused SASL login or a failed TLS handshake as an error *event* (and a
//! log line), while the call that needed the connection only fails with "broker transport
//! failure" after its timeout. [`SecurityWatch`] is the client context that remembers those
//! failures, so that the caller can stop at once with a message naming the cause and the keys
//! to fix. librdkafka's reasons never contain the password.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// What to check when Kafka refuses the client.
pub const SECURITY_HINT: &str = "check source.sasl_password (or sasl_password_file), \
     source.properties \"sasl.username\", \"sasl.mechanism\" and \"security.protocol\" \
     (and \"ssl.ca.location\" for TLS)";

/// Client context that logs as rdkafka's default does and remembers the first authentication or
/// TLS failure.
#[derive(Default)]
pub struct SecurityWatch {
    failure: Mutex<Option<String>>,
}

impl SecurityWatch {
    /// The first authentication or TLS failure seen, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().map(|f| f.clone()).unwrap_or(None)
    }

    fn remember(&self, reason: &str) {
        if let Ok(mut f) = self.failure.lock()
            && f.is_none()
        {
            *f = Some(reason.to_string());
        }
    }
}

/// Most queued client events served by one [`refusal`] call.
const EVENTS_SERVED_MAX: usize = 64;

/// Serves the pending events of a consumer that has **no partitions assigned** (librdkafka
/// delivers its log lines and error events through the poll, and only then does
/// [`SecurityWatch`] see them) and returns the authentication or TLS failure, if any. Call it
/// between short metadata attempts.
pub fn refusal(consumer: &BaseConsumer<SecurityWatch>) -> Option<String> {
    for _ in 0..EVENTS_SERVED_MAX {
        match consumer.poll(Duration::ZERO) {
            Some(Err(e)) if is_security_error(e.rdkafka_error_code()) => {
                return Some(
                    consumer
                        .context()
                        .failure()
                        .unwrap_or_else(|| e.to_string()),
                );
            }
            Some(_) => {}
            None => break,
        }
    }
    consumer.context().failure()
}

/// Whether an error code means the broker refused the client's credentials or TLS.
pub fn is_security_error(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::SaslAuthenticationFailed
        )
    )
}

impl ClientContext for SecurityWatch {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let is_error = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        );
        // librdkafka's own wording: "SASL authentication error: ...", "SSL handshake failed: ...".
        if is_error
            && (log_message.contains("SASL authentication error")
                || log_message.contains("SSL handshake failed"))
        {
            self.remember(log_message);
        }
        match level {
            _ if is_error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            _ => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        // rdkafka hands every error event to this callback as well as to the poller, the end
        // of a partition included: that is the consumers' expected answer, not an error
        // (issue 13, finding 9: an ERROR line per partition on every start).
        if code == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        if is_security_error(code) {
            self.remember(reason);
        }
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
    }
}

impl ConsumerContext for SecurityWatch {}
