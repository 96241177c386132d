//! The engine contract, checked against the Redis engine on a real Redis: the same checks the
//! memory engine passes.

use std::sync::Arc;

use herald_core::Engine;
use herald_redis::{testing, RedisConfig, RedisEngine};

async fn engine() -> Arc<dyn Engine> {
    let mut config = RedisConfig::new(testing::shared().url.clone());
    config.prefix = testing::unique_prefix("conformance");
    Arc::new(RedisEngine::connect(config).await.expect("connect"))
}

herald_core::engine_conformance_tests!(engine());
