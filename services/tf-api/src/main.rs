// `tf-api`: the binary. All wiring is in the library (`tf_api::run`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tf_api::run(tf_api::Config::parse()).await
}
