//! What the benchmarks (`squall-bench`, `cargo bench --bench cluster`) share:
//! the median of runs, and the one-JSON-line-per-figure output that
//! `make bench` documents.

/// The median of `v` (the upper one of an even count); 0 when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Print one figure as a JSON line `{"figure", "value", "unit"}`, the value
/// rounded to three decimals.
pub fn figure(name: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({"figure": name, "value": (value * 1000.0).round() / 1000.0, "unit": unit})
    );
}
