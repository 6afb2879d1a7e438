//! `/api/comparisons`: the reports `conclave compare` wrote into the project's
//! `.conclave/compare/` folder (one folder per comparison holding `compare-<time>.json`,
//! `report.md` and an SVG chart per metric), listed for the dashboard and served as files. Read
//! only; names are checked so that nothing outside those folders can be read.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use conclave_core::CoreError;
use conclave_core::model::{ComparisonList, ComparisonSummary};
use serde_json::Value;

use crate::app::App;
use crate::error::ApiResult;
use crate::extract::ApiPath;

/// The folder `conclave compare` writes into by default, under the project's state folder.
fn compare_root(app: &App) -> Option<PathBuf> {
    let root = app.settings().project_root.as_ref()?;
    Some(
        conclave_core::project::Project::at(root)
            .state_dir()
            .join("compare"),
    )
}

/// `compare-YYYYmmdd-HHMMSS`, nothing else.
fn is_comparison_name(name: &str) -> bool {
    name.strip_prefix("compare-").is_some_and(|stamp| {
        stamp.len() == 15
            && stamp
                .chars()
                .enumerate()
                .all(|(i, c)| if i == 8 { c == '-' } else { c.is_ascii_digit() })
    })
}

/// `report.md` or `<metric>.svg` with a metric of lowercase letters and underscores.
fn is_report_file(file: &str) -> bool {
    file == "report.md"
        || file.strip_suffix(".svg").is_some_and(|stem| {
            !stem.is_empty() && stem.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
}

fn summary(folder: &Path, name: &str) -> Option<ComparisonSummary> {
    let text = std::fs::read_to_string(folder.join(format!("{name}.json"))).ok()?;
    let json: Value = serde_json::from_str(&text).ok()?;
    let runs = json["runs"].as_array()?;
    let mut charts: Vec<String> = std::fs::read_dir(folder)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|file| file.ends_with(".svg") && is_report_file(file))
        .collect();
    charts.sort();
    Some(ComparisonSummary {
        name: name.to_string(),
        started_at: json["started_at"].as_str().unwrap_or_default().to_string(),
        scripted: json["scripted"].as_bool().unwrap_or(false),
        ways: json["ways"]
            .as_array()
            .map(|ways| {
                ways.iter()
                    .filter_map(|w| w.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        runs: runs.len() as i64,
        passed: runs.iter().filter(|r| r["check_passed"] == true).count() as i64,
        report: format!("/api/comparisons/{name}/report.md"),
        charts,
    })
}

pub async fn list(State(app): State<App>) -> ApiResult<Json<ComparisonList>> {
    let Some(root) = compare_root(&app) else {
        return Ok(Json(ComparisonList {
            comparisons: Vec::new(),
        }));
    };
    let comparisons = tokio::task::spawn_blocking(move || {
        let mut found: Vec<ComparisonSummary> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = entry.file_name().into_string().ok()?;
                is_comparison_name(&name).then(|| summary(&entry.path(), &name))?
            })
            .collect();
        found.sort_by(|a, b| b.name.cmp(&a.name));
        found
    })
    .await
    .unwrap_or_default();
    Ok(Json(ComparisonList { comparisons }))
}

pub async fn file(
    State(app): State<App>,
    ApiPath((name, file)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    if !is_comparison_name(&name) || !is_report_file(&file) {
        return Err(CoreError::not_found(format!("no comparison file {name}/{file}")).into());
    }
    let path = compare_root(&app)
        .map(|root| root.join(&name).join(&file))
        .ok_or_else(|| CoreError::not_found("this server knows no project folder"))?;
    let body = tokio::fs::read(&path)
        .await
        .map_err(|_| CoreError::not_found(format!("no comparison file {name}/{file}")))?;
    let kind = if file.ends_with(".svg") {
        "image/svg+xml"
    } else {
        "text/markdown; charset=utf-8"
    };
    Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_comparison_folders_and_report_files_are_served() {
        assert!(is_comparison_name("compare-20261201-021500"));
        for bad in [
            "compare-2026",
            "../compare-20261201-021500",
            "x-20261201-021500",
            "compare-20261201/021500",
        ] {
            assert!(!is_comparison_name(bad), "{bad}");
        }
        assert!(is_report_file("report.md") && is_report_file("cost_usd.svg"));
        for bad in ["../report.md", ".svg", "a.json", "x/y.svg", "Cost.svg"] {
            assert!(!is_report_file(bad), "{bad}");
        }
    }
}
