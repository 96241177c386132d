//! Results: one JSON line per step (for tools) and a Markdown table (for `docs/benchmarks.md`).

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

/// One measured step of a scenario. Fields that do not apply to a scenario are left out.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Step {
    pub scenario: &'static str,
    pub connections: usize,
    /// What the step varies: publications/s, connects/s, or a label.
    pub load: String,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_mib: Option<f64>,
    /// The Redis the nodes share, when its process is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_connection: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connects_per_s: Option<f64>,
    pub generator_cpu_pct: f64,
    /// The generator used most of its core: the figures may be its limit, not the server's.
    pub generator_bound: bool,
    /// The publisher could not keep the asked rate.
    pub publisher_behind: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "".to_string(), |v| format!("{v:.digits$}"))
}

fn count(v: Option<u64>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

impl Step {
    /// The table's header; with `redis`, a column for the Redis server's CPU.
    pub fn table_header(redis: bool) -> String {
        let (redis_name, redis_rule) = if redis {
            (" Redis CPU % |", "---|")
        } else {
            ("", "")
        };
        format!(
            "| scenario | conns | load | deliveries/s | lost | dup | p50 ms | p99 ms | p99.9 ms | max ms | server CPU % | server RSS MiB |{redis_name} B/conn | gen CPU % | note |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|{redis_rule}---|---|---|"
        )
    }

    /// The step's row of the table; with `redis`, the Redis server's CPU in its column.
    pub fn table_row(&self, redis: bool) -> String {
        let mut note = self.note.clone().unwrap_or_default();
        if self.generator_bound {
            note.push_str(" generator-bound");
        }
        if self.publisher_behind {
            note.push_str(" publisher-behind");
        }
        let redis_cell = if redis {
            format!(" {} |", cell(self.redis_cpu_pct, 0))
        } else {
            String::new()
        };
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |{redis_cell} {} | {:.0} | {} |",
            self.scenario,
            self.connections,
            self.load,
            cell(self.deliveries_per_s, 0),
            count(self.lost),
            count(self.duplicates),
            cell(self.p50_ms, 2),
            cell(self.p99_ms, 2),
            cell(self.p999_ms, 2),
            cell(self.max_ms, 1),
            cell(self.server_cpu_pct, 0),
            cell(self.server_rss_mib, 1),
            cell(self.bytes_per_connection, 0),
            self.generator_cpu_pct,
            note.trim(),
        )
    }
}

/// Where results go: stdout always, plus optional JSON-lines and Markdown files.
///
/// Stdout shows each row as its step ends, with the columns of the first step (every step of a
/// run measures the same processes); the Markdown file, written at the end, has the Redis column
/// when any step has a Redis figure.
pub struct Report {
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
    steps: Vec<Step>,
    /// Whether stdout's table has the Redis column; decided by the first step.
    stdout_redis: Option<bool>,
}

impl Report {
    pub fn new(json: Option<PathBuf>, markdown: Option<PathBuf>) -> Report {
        Report {
            json,
            markdown,
            steps: Vec::new(),
            stdout_redis: None,
        }
    }

    pub fn add(&mut self, step: &Step) {
        let redis = *self.stdout_redis.get_or_insert_with(|| {
            let redis = step.redis_cpu_pct.is_some();
            println!("{}", Step::table_header(redis));
            redis
        });
        println!("{}", step.table_row(redis));
        if let Some(path) = &self.json {
            let line = serde_json::to_string(step).unwrap_or_default();
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(file, "{line}");
            }
        }
        self.steps.push(step.clone());
    }

    pub fn finish(&self) {
        if let Some(path) = &self.markdown {
            let redis = self.steps.iter().any(|s| s.redis_cpu_pct.is_some());
            let mut text = Step::table_header(redis);
            for step in &self.steps {
                text.push('\n');
                text.push_str(&step.table_row(redis));
            }
            text.push('\n');
            let _ = std::fs::write(path, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(line: &str) -> usize {
        line.matches('|').count()
    }

    #[test]
    fn the_redis_column_is_in_the_header_and_every_row_or_in_none() {
        let step = Step {
            redis_cpu_pct: Some(12.4),
            ..Step::default()
        };
        for redis in [false, true] {
            let header = Step::table_header(redis);
            let (names, rule) = header.split_once('\n').expect("two lines");
            assert_eq!(names.contains("Redis CPU %"), redis);
            assert_eq!(columns(names), columns(rule));
            assert_eq!(columns(names), columns(&step.table_row(redis)));
        }
        assert!(step.table_row(true).contains("| 12 |"));
        let json = serde_json::to_string(&Step::default()).unwrap_or_default();
        assert!(!json.contains("redis_cpu_pct"));
    }
}
