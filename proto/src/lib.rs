//! Generated code for the `wva.v1` protocol.
#![forbid(unsafe_code)]

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("wva.v1");
}
