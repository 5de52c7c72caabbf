//! A model's identity, owned and borrowed: the key of the engine's
//! per-model state (activity, trend, flap guard).

/// A model: its namespace and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelKey {
    namespace: String,
    model: String,
}

/// A [`ModelKey`] borrowed: what the engine's maps are probed with, so that
/// a model they know costs no copy. Hashes as its owned form does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelRef<'a> {
    pub namespace: &'a str,
    pub model: &'a str,
}

impl hashbrown::Equivalent<ModelKey> for ModelRef<'_> {
    fn equivalent(&self, key: &ModelKey) -> bool {
        self.namespace == key.namespace && self.model == key.model
    }
}

impl From<&ModelRef<'_>> for ModelKey {
    fn from(model: &ModelRef<'_>) -> Self {
        ModelKey {
            namespace: model.namespace.to_string(),
            model: model.model.to_string(),
        }
    }
}

/// The model the tests use.
#[cfg(test)]
pub(crate) const A_MODEL: ModelRef<'static> = ModelRef {
    namespace: "ns",
    model: "m",
};

impl ModelKey {
    pub fn borrowed(&self) -> ModelRef<'_> {
        ModelRef {
            namespace: &self.namespace,
            model: &self.model,
        }
    }
}
