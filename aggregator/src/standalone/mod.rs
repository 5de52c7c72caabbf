//! Standalone mode: no Kubernetes. VariantAutoscalings come from a file and,
//! optionally, a local actuator runs simulated replicas that follow the
//! desired replica counts.
pub mod actuator;
pub mod probe;
pub mod replica;
