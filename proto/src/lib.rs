//! Generated code for the `wva.v1` protocol and KEDA's external scaler.
#![forbid(unsafe_code)]

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/wva.v1.rs"));
}

/// KEDA's `externalscaler` package, which the aggregator serves.
pub mod keda {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/externalscaler.rs"));
}
