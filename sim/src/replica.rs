//! One simulated vLLM server: its engine ranks, readiness, identities and
//! `/metrics` rendering. The HTTP layer ([`crate::api`]) is a thin view of it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::time::Instant;

use crate::config::SimConfig;
use crate::engine::Engine;
use crate::metrics::exposition::{EngineView, Exposition};
use crate::metrics::lora::{AdapterId, LoraInfo};
use crate::metrics::restrict::{SampleNames, restrict};
use crate::metrics::text::escape_label_value;
use crate::tokens::mix;

pub struct Replica {
    config: SimConfig,
    engines: Vec<Engine>,
    next_engine: AtomicUsize,
    next_id: AtomicU64,
    ready_at: Instant,
    lora: Option<Arc<Mutex<LoraInfo>>>,
    model_label: String,
    /// Reused across scrapes so rendering does not grow a new buffer each time.
    exposition: Mutex<String>,
}

/// The model a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedModel {
    Base,
    Adapter(AdapterId),
}

impl Replica {
    /// Starts the engine ranks on the current tokio runtime; the replica is
    /// ready once `config.startup_delay` has passed.
    pub fn start(config: SimConfig) -> Arc<Self> {
        let lora = (!config.lora_adapters.is_empty()).then(|| {
            Arc::new(Mutex::new(LoraInfo::new(
                &config.lora_adapters,
                config.engine.max_loras,
            )))
        });
        let engines = (0..config.data_parallel_size)
            .map(|_| Engine::start(config.engine.clone(), lora.clone()))
            .collect();
        Arc::new(Self {
            model_label: escape_label_value(&config.model),
            ready_at: Instant::now() + config.startup_delay,
            engines,
            next_engine: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            lora,
            exposition: Mutex::new(String::new()),
            config,
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Engine ranks, in `engine` label order.
    pub fn engines(&self) -> &[Engine] {
        &self.engines
    }

    pub fn is_ready(&self) -> bool {
        Instant::now() >= self.ready_at
    }

    /// The engine for the next request (round-robin over ranks).
    pub fn next_engine(&self) -> &Engine {
        let rank = self.next_engine.fetch_add(1, Ordering::Relaxed) % self.engines.len();
        &self.engines[rank]
    }

    /// A fresh response id suffix, reproducible for a given seed and request order.
    pub fn next_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let seed = self.config.seed;
        format!("{:016x}{:016x}", mix(seed, n), mix(n, seed ^ 0x5eed))
    }

    /// Which served model `name` is, if any.
    pub fn resolve_model(&self, name: &str) -> Option<ServedModel> {
        if name == self.config.model {
            return Some(ServedModel::Base);
        }
        let position = self.config.lora_adapters.iter().position(|a| a == name)?;
        AdapterId::try_from(position).ok().map(ServedModel::Adapter)
    }

    /// The `/metrics` body: vLLM 0.11's `vllm:` families for every rank.
    pub fn render_metrics(&self) -> Bytes {
        self.render(|text| Bytes::copy_from_slice(text.as_bytes()))
    }

    /// The `/metrics?name[]=…` body: only the samples `names` asks for.
    pub fn render_metrics_of(&self, names: &SampleNames) -> Bytes {
        self.render(|text| Bytes::from(restrict(text, names)))
    }

    /// The whole exposition, handed to `body` to make the response body.
    fn render(&self, body: impl FnOnce(&str) -> Bytes) -> Bytes {
        let schedulers: Vec<_> = self.engines.iter().map(Engine::scheduler).collect();
        let views: Vec<_> = schedulers
            .iter()
            .map(|s| {
                let snapshot = s.snapshot();
                EngineView {
                    running: snapshot.running,
                    waiting: snapshot.waiting,
                    kv_cache_usage: s.kv_cache_usage(),
                    metrics: s.metrics(),
                }
            })
            .collect();
        let lora = self
            .lora
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(PoisonError::into_inner));
        let mut out = self
            .exposition
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        out.clear();
        Exposition {
            model_label: &self.model_label,
            block_size: self.config.engine.block_size,
            num_gpu_blocks: self.config.engine.num_gpu_blocks,
            engines: &views,
            lora: lora.as_deref(),
        }
        .write(&mut out);
        body(&out)
    }
}
