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
    pub const TABLE_HEADER: &'static str = "| scenario | conns | load | deliveries/s | lost | dup | p50 ms | p99 ms | p99.9 ms | max ms | server CPU % | server RSS MiB | B/conn | gen CPU % | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

    pub fn table_row(&self) -> String {
        let mut note = self.note.clone().unwrap_or_default();
        if self.generator_bound {
            note.push_str(" generator-bound");
        }
        if self.publisher_behind {
            note.push_str(" publisher-behind");
        }
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
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
pub struct Report {
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
    rows: Vec<String>,
}

impl Report {
    pub fn new(json: Option<PathBuf>, markdown: Option<PathBuf>) -> Report {
        println!("{}", Step::TABLE_HEADER);
        Report {
            json,
            markdown,
            rows: Vec::new(),
        }
    }

    pub fn add(&mut self, step: &Step) {
        let row = step.table_row();
        println!("{row}");
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
        self.rows.push(row);
    }

    pub fn finish(&self) {
        if let Some(path) = &self.markdown {
            let mut text = String::from(Step::TABLE_HEADER);
            for row in &self.rows {
                text.push('\n');
                text.push_str(row);
            }
            text.push('\n');
            let _ = std::fs::write(path, text);
        }
    }
}
