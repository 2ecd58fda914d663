//! `workers.toml`: where the cluster's processes live and which broker and databases to use.
//!
//! Every section is optional in the file; a command asks for the section it needs and gets an
//! error naming the file and the missing key when it is absent. Environment variables override
//! the file so that a user (or a test) can point a job elsewhere without editing it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::toml_file;

/// The whole `workers.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    pub cluster: Option<ClusterConfig>,
    pub kafka: Option<KafkaConfig>,
    pub postgres: Option<PostgresConfig>,
    /// The file this was read from, for error messages.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[cluster]`: one address per timely process, and worker threads per process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub processes: Vec<String>,
    #[serde(default = "one")]
    pub threads: usize,
}

fn one() -> usize {
    1
}

/// `[kafka]`: the broker the streaming job reads from (`CLICKSTAY_KAFKA_BROKERS` overrides).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
}

fn default_partitions() -> i32 {
    8
}

/// `[postgres]`: `clicks` is the database for click results (`CLICKSTAY_CLICKS_DB` overrides);
/// `shards` are the hotel databases, hotel `h` on shard `h % shards.len()`
/// (`CLICKSTAY_HOTEL_SHARDS`, comma-separated, overrides).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub clicks: Option<String>,
    #[serde(default)]
    pub shards: Vec<String>,
}

impl WorkersConfig {
    /// Reads and checks `path`, then applies the environment overrides.
    pub fn load(path: &Path) -> Result<Self> {
        let mut config = Self::parse(&toml_file::read(path, "config file")?, path)?;
        config.apply_env();
        Ok(config)
    }

    /// Parses the text of a config file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut config: WorkersConfig = toml_file::parse(text, path)?;
        config.path = path.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    /// No config file at all: only the environment can supply settings.
    pub fn from_env_only() -> Self {
        let mut config = WorkersConfig { path: PathBuf::from("(environment)"), ..Default::default() };
        config.apply_env();
        config
    }

    fn validate(&self) -> Result<()> {
        let file = self.path.display();
        if let Some(cluster) = &self.cluster {
            if cluster.processes.is_empty() {
                bail!("{file}: cluster.processes: must list at least one process address");
            }
            if cluster.threads == 0 {
                bail!("{file}: cluster.threads: must be at least 1");
            }
            for (index, address) in cluster.processes.iter().enumerate() {
                address.parse::<SocketAddr>().map_err(|e| {
                    anyhow::anyhow!("{file}: cluster.processes[{index}]: not a host:port address ({e})")
                })?;
            }
        }
        if let Some(kafka) = &self.kafka {
            if kafka.partitions < 1 {
                bail!("{file}: kafka.partitions: must be at least 1, got {}", kafka.partitions);
            }
            if kafka.topic.is_empty() {
                bail!("{file}: kafka.topic: must not be empty");
            }
        }
        Ok(())
    }

    fn apply_env(&mut self) {
        if let Ok(brokers) = std::env::var("CLICKSTAY_KAFKA_BROKERS") {
            if let Some(kafka) = &mut self.kafka {
                kafka.brokers = brokers;
            } else {
                self.kafka = Some(KafkaConfig { brokers, topic: "clicks".into(), partitions: default_partitions() });
            }
        }
        if let Ok(url) = std::env::var("CLICKSTAY_CLICKS_DB") {
            self.postgres.get_or_insert_with(Default::default).clicks = Some(url);
        }
        if let Ok(urls) = std::env::var("CLICKSTAY_HOTEL_SHARDS") {
            let shards = urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            self.postgres.get_or_insert_with(Default::default).shards = shards;
        }
    }

    /// The `[cluster]` section, or an error naming the file.
    pub fn cluster(&self) -> Result<&ClusterConfig> {
        self.cluster.as_ref().with_context(|| format!("{}: missing [cluster] section", self.path.display()))
    }

    /// The `[kafka]` section, or an error naming the file.
    pub fn kafka(&self) -> Result<&KafkaConfig> {
        self.kafka.as_ref().with_context(|| {
            format!("{}: missing [kafka] section (or set CLICKSTAY_KAFKA_BROKERS)", self.path.display())
        })
    }

    /// The hotel shard URLs, or an error naming the file.
    pub fn hotel_shards(&self) -> Result<&[String]> {
        match &self.postgres {
            Some(pg) if !pg.shards.is_empty() => Ok(&pg.shards),
            _ => bail!("{}: missing postgres.shards (or set CLICKSTAY_HOTEL_SHARDS)", self.path.display()),
        }
    }

    /// The click-results database URL, or an error naming the file.
    pub fn clicks_db(&self) -> Result<&str> {
        self.postgres
            .as_ref()
            .and_then(|pg| pg.clicks.as_deref())
            .with_context(|| format!("{}: missing postgres.clicks (or set CLICKSTAY_CLICKS_DB)", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_issue_example() {
        let text = "[cluster]\nprocesses = [\"127.0.0.1:2101\", \"127.0.0.1:2102\"]\nthreads = 2\n";
        let config = WorkersConfig::parse(text, Path::new("workers.toml")).unwrap();
        let cluster = config.cluster().unwrap();
        assert_eq!(cluster.processes.len(), 2);
        assert_eq!(cluster.threads, 2);
        assert!(config.kafka().is_err());
    }

    #[test]
    fn bad_address_names_file_and_key_not_the_value() {
        let text = "[cluster]\nprocesses = [\"nowhere\"]\n";
        let error = WorkersConfig::parse(text, Path::new("w.toml")).unwrap_err().to_string();
        assert!(
            error.contains("w.toml") && error.contains("cluster.processes[0]") && !error.contains("nowhere"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let text = "[cluster]\nprocesses = [\"127.0.0.1:1\"]\nthread = 2\n";
        let error = WorkersConfig::parse(text, Path::new("w.toml")).unwrap_err().to_string();
        assert!(error.contains("w.toml") && error.contains("thread"), "{error}");
    }
}
