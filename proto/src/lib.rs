//! Generated code for the `wva.v1` protocol and KEDA's external scaler.
#![forbid(unsafe_code)]

/// The largest `AgentMessage` the aggregator accepts, in encoded bytes. A
/// sample is a few hundred bytes; an agent reports a larger one as a failed
/// scrape instead of sending it.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Operator-configured signals one sample may carry (`Sample.signals`): the
/// agent refuses more flags, the aggregator more values.
pub const MAX_SIGNALS: usize = 16;

/// Longest signal name, in bytes.
pub const MAX_SIGNAL_NAME_BYTES: usize = 63;

/// Whether `name` is a signal name: `[a-z_][a-z0-9_]*`, at most
/// [`MAX_SIGNAL_NAME_BYTES`]. Agents name what they forward this way, and
/// scaling targets name what they scale on.
pub fn is_signal_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && name.len() <= MAX_SIGNAL_NAME_BYTES
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/wva.v1.rs"));
}

/// KEDA's `externalscaler` package, which the aggregator serves.
pub mod keda {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/externalscaler.rs"));
}
