//! The savings report for a person (an aligned table) or a program (JSON).

use super::compute::{Report, WorkloadRow};

fn money(usd: f64) -> String {
    format!("{usd:.5}")
}

fn percent(savings: Option<f64>) -> String {
    savings.map_or_else(|| "-".into(), |s| format!("{s:.1}%"))
}

fn placement(row: &WorkloadRow) -> String {
    row.placement
        .iter()
        .map(|p| format!("{}:{}", p.placement, p.pods))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per workload, then the totals; money in $/hour.
pub fn table(report: &Report) -> String {
    let header = [
        "NAMESPACE",
        "WORKLOAD",
        "PODS",
        "UNPRICED",
        "WHERE",
        "$/H NOW",
        "ON-DEMAND $/H",
        "SAVINGS",
    ];
    let mut rows: Vec<[String; 8]> = vec![header.map(String::from)];
    for row in &report.workloads {
        rows.push([
            row.namespace.clone(),
            row.workload.clone(),
            row.pods.to_string(),
            row.pods_unpriced.to_string(),
            placement(row),
            money(row.total_usd_per_hour),
            money(row.on_demand_equivalent_usd_per_hour),
            percent(row.savings_percent),
        ]);
    }
    let t = &report.totals;
    rows.push([
        "TOTAL".into(),
        format!("{} workloads", t.workloads),
        t.pods.to_string(),
        t.pods_unpriced.to_string(),
        t.on_top_ranked_ratio.map_or_else(
            || "-".into(),
            |r| format!("{:.0}% on a rank-1 spot type", r * 100.0),
        ),
        money(t.total_usd_per_hour),
        money(t.on_demand_equivalent_usd_per_hour),
        percent(t.savings_percent),
    ]);
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| match i {
                // Numbers right-aligned.
                2 | 3 | 5 | 6 | 7 => format!("{cell:>w$}"),
                _ => format!("{cell:<w$}"),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The report as pretty JSON (the same fields as [`Report`]).
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("the report serializes") + "\n"
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::savings::compute::{PlacedPods, Totals};

    fn report() -> Report {
        Report {
            workloads: vec![WorkloadRow {
                namespace: "demo".into(),
                workload: "deployment/api".into(),
                pods: 3,
                pods_unpriced: 1,
                placement: vec![
                    PlacedPods {
                        placement: "spot-rank-1".into(),
                        pods: 2,
                    },
                    PlacedPods {
                        placement: "unknown".into(),
                        pods: 1,
                    },
                ],
                cost_usd_per_hour: BTreeMap::from([("spot".into(), 0.04)]),
                total_usd_per_hour: 0.04,
                on_demand_equivalent_usd_per_hour: 0.145,
                savings_percent: Some(72.41379),
            }],
            totals: Totals {
                workloads: 1,
                pods: 3,
                pods_unpriced: 1,
                cost_usd_per_hour: BTreeMap::from([("spot".into(), 0.04)]),
                total_usd_per_hour: 0.04,
                on_demand_equivalent_usd_per_hour: 0.145,
                savings_percent: Some(72.41379),
                placeable_pods: BTreeMap::new(),
                on_top_ranked_ratio: Some(2.0 / 3.0),
            },
        }
    }

    #[test]
    fn the_table_has_a_row_per_workload_and_a_total() {
        let text = table(&report());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAMESPACE") && lines[0].ends_with("SAVINGS"));
        for cell in [
            "demo",
            "deployment/api",
            "spot-rank-1:2, unknown:1",
            "0.04000",
            "0.14500",
            "72.4%",
        ] {
            assert!(lines[1].contains(cell), "{cell} in {}", lines[1]);
        }
        assert!(lines[2].starts_with("TOTAL") && lines[2].contains("67% on a rank-1 spot type"));
        // Columns line up: SAVINGS ends where the values end.
        assert_eq!(lines[0].len(), lines[1].len());
    }

    #[test]
    fn json_carries_every_figure() {
        let value: serde_json::Value = serde_json::from_str(&json(&report())).unwrap();
        let row = &value["workloads"][0];
        assert_eq!(row["workload"], "deployment/api");
        assert_eq!(row["cost_usd_per_hour"]["spot"], 0.04);
        assert_eq!(row["on_demand_equivalent_usd_per_hour"], 0.145);
        assert_eq!(row["pods_unpriced"], 1);
        assert_eq!(row["placement"][0]["placement"], "spot-rank-1");
        assert_eq!(value["totals"]["pods"], 3);
    }
}
