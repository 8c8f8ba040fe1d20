// The upgrade drill's build of the worker: the same binary as tf-worker (Cargo.toml says why).
include!("../main.rs");
