//! The one statistic the benchmark drivers that run rounds share. Included with `#[path]` by
//! `bench_refresh` and `bench_connector`.

/// The middle value (the mean of the middle two for an even count); NaN for none.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
