//! What a load test makes on the stack it measures: topics and an activity definition with
//! names of their own. They are removed when the run succeeds, so a long-lived stack does not
//! collect them (one test stack had gathered 82 topics and 466 partitions for its router to
//! read); they are kept when it fails, to be looked into, or when `--keep` asks for them.

use tf_config::Settings;

#[derive(Default)]
pub struct Made {
    topics: Vec<String>,
    /// Each definition's id and the database it is in.
    definitions: Vec<(String, tf_store::PgPool)>,
}

impl Made {
    pub fn topic(&mut self, name: &str) {
        self.topics.push(name.to_owned());
    }

    pub fn definition(&mut self, id: &str, pool: &tf_store::PgPool) {
        self.definitions.push((id.to_owned(), pool.clone()));
    }

    fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.definitions.is_empty()
    }

    fn described(&self) -> String {
        let mut parts = Vec::new();
        if !self.topics.is_empty() {
            parts.push(format!("topic{} {}", if self.topics.len() == 1 { "" } else { "s" }, self.topics.join(", ")));
        }
        if !self.definitions.is_empty() {
            let ids: Vec<&str> = self.definitions.iter().map(|(id, _)| id.as_str()).collect();
            parts.push(format!("definition{} {}", if ids.len() == 1 { "" } else { "s" }, ids.join(", ")));
        }
        parts.join(" and ")
    }

    /// After a run: removes what it made when it succeeded, unless `keep`. A failure here is
    /// reported, not returned: the figures were printed already.
    pub async fn clean_up(self, settings: &Settings, succeeded: bool, keep: bool) {
        if self.is_empty() {
            return;
        }
        if keep || !succeeded {
            let why = if keep { "--keep" } else { "the run failed: kept for inspection" };
            println!("kept {} ({why})", self.described());
            return;
        }
        self.remove(settings).await;
    }

    /// Retires the definitions first, so the router stops reading the topics before they go,
    /// then deletes the topics. Says what it removed and what it could not; true when all went.
    pub async fn remove(self, settings: &Settings) -> bool {
        let described = self.described();
        let mut all = true;
        for (id, pool) in &self.definitions {
            if let Err(e) = tf_store::definitions::retire(pool, id).await {
                eprintln!("could not retire definition {id}: {e} (remove it with `tf definitions delete {id}`)");
                all = false;
            }
        }
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(e) = tf_kafka::topics::delete(&settings.kafka_brokers, &topics).await {
            eprintln!("could not delete the load test's topics {}: {e}", topics.join(", "));
            all = false;
        }
        if all {
            println!("removed {described}");
        }
        all
    }
}
