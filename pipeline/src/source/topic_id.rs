//! Kafka topic ids (KIP-516): the broker-assigned identity of a topic, which a topic deleted
//! and recreated under the same name does not keep.
//!
//! rdkafka 0.39 exposes no admin call that returns them; librdkafka 2.12 (bundled by
//! rdkafka-sys 4.10) has `rd_kafka_DescribeTopics`, reached here through its C API: one request
//! to one broker per call, whatever the partition count. A broker that does not assign ids
//! (librdkafka's mock cluster, used by `demo`) answers with the all-zero id, which reads as
//! [`Described::Unsupported`]: callers then fall back to the start-time record fingerprints
//! ([`super::identity`]).

use std::ffi::{CStr, CString};
use std::fmt;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use serde::{Deserialize, Serialize};

/// A topic id as librdkafka prints it (base64 of the 16 bytes). Stored in every checkpoint's
/// manifest, so the text is a compatibility promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicId(pub String);

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the broker says about the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Described {
    /// The topic exists and has this id.
    Id(TopicId),
    /// The topic does not exist (deleted, or never created).
    Missing,
    /// The broker does not report topic ids (all-zero id, or the API is not supported).
    Unsupported(String),
}

/// Why no answer came (broker down, timeout): nothing is proven either way.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DescribeTopics for {topic:?} failed: {message}")]
pub struct DescribeFailed {
    /// Topic asked about.
    pub topic: String,
    /// librdkafka's error.
    pub message: String,
}

/// Owns a librdkafka object and frees it with its destructor when dropped, so every early
/// return below releases what was allocated.
struct Owned<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching librdkafka constructor and is freed once.
            unsafe { (self.1)(self.0) }
        }
    }
}

fn text(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: librdkafka returns NUL-terminated strings that live as long as their owner,
    // which outlives this copy.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Whether the cluster names a controller among its brokers. Admin requests such as
/// `DescribeTopics` go to the controller; librdkafka's mock cluster (the demo) names none, and
/// asking it would only wait for the timeout. Blocking, bounded by `timeout`.
pub fn has_controller<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<bool, DescribeFailed> {
    use rdkafka::consumer::Consumer;
    // One topic's metadata: the broker list and the controller come with it.
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| DescribeFailed {
            topic: topic.to_string(),
            message: format!("cluster metadata: {e}"),
        })?;
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the live client handle; librdkafka answers from the metadata just fetched.
    let controller =
        unsafe { rd::rd_kafka_controllerid(consumer.client().native_ptr(), ms.min(1_000)) };
    Ok(controller >= 0 && md.brokers().iter().any(|b| b.id() == controller))
}

/// Asks the cluster for `topic`'s id with one `DescribeTopics` request, waiting at most
/// `timeout`. Blocking: call it from a thread that may block (a `spawn_blocking` task, the
/// source's monitor thread).
pub fn describe<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Described, DescribeFailed> {
    let failed = |message: String| DescribeFailed {
        topic: topic.to_string(),
        message,
    };
    let name = CString::new(topic).map_err(|_| failed("the topic name holds a NUL byte".into()))?;
    let timeout_ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    let rk = client.native_ptr();
    // SAFETY: every pointer passed to librdkafka below is either the live client handle, a
    // pointer into `name`, or an object created here and owned by an `Owned` guard; the
    // result strings are copied before the event that owns them is destroyed.
    unsafe {
        let names = [name.as_ptr()];
        let topics = Owned(
            rd::rd_kafka_TopicCollection_of_topic_names(names.as_ptr() as *mut _, 1),
            rd::rd_kafka_TopicCollection_destroy,
        );
        let options = Owned(
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            rd::rd_kafka_AdminOptions_destroy,
        );
        let mut errstr = [0 as std::os::raw::c_char; 256];
        if rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        ) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(failed(text(errstr.as_ptr())));
        }
        let queue = Owned(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        rd::rd_kafka_DescribeTopics(rk, topics.0, options.0, queue.0);
        // The request timeout makes librdkafka answer within `timeout`; the margin covers the
        // time the answer takes to reach the queue.
        let event = Owned(
            rd::rd_kafka_queue_poll(queue.0, timeout_ms.saturating_add(1_000)),
            rd::rd_kafka_event_destroy,
        );
        if event.0.is_null() {
            return Err(failed(format!("no answer within {timeout:?}")));
        }
        let err = rd::rd_kafka_event_error(event.0);
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            let message = text(rd::rd_kafka_event_error_string(event.0));
            return match err {
                rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE
                | rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION => {
                    Ok(Described::Unsupported(message))
                }
                _ => Err(failed(message)),
            };
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.0);
        if result.is_null() {
            return Err(failed("the answer was not a DescribeTopics result".into()));
        }
        let mut count = 0usize;
        let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        if descriptions.is_null() || count != 1 {
            return Err(failed(format!(
                "expected one topic description, got {count}"
            )));
        }
        let d = *descriptions;
        let e = rd::rd_kafka_TopicDescription_error(d);
        if !e.is_null() {
            let code = rd::rd_kafka_error_code(e);
            if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART
                || code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_ID
            {
                return Ok(Described::Missing);
            }
            if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                return Err(failed(text(rd::rd_kafka_error_string(e))));
            }
        }
        let id = rd::rd_kafka_TopicDescription_topic_id(d);
        if id.is_null()
            || (rd::rd_kafka_Uuid_most_significant_bits(id) == 0
                && rd::rd_kafka_Uuid_least_significant_bits(id) == 0)
        {
            return Ok(Described::Unsupported(
                "the broker reports no topic id (all zero)".into(),
            ));
        }
        Ok(Described::Id(TopicId(text(rd::rd_kafka_Uuid_base64str(
            id,
        )))))
    }
}
