//! The HdrHistogram percentile-distribution text (`.hgrm`), as Java's
//! `Histogram.outputPercentileDistribution` prints it, so the usual HdrHistogram plotters and
//! `HistogramLogProcessor` tooling read it.

use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// Rows per halving of the distance to 100% (HdrHistogram's default).
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The distribution of `h`, values divided by `scale` (1.0 keeps the recorded unit).
pub fn percentile_distribution(h: &Histogram<u64>, scale: f64) -> String {
    let digits = h.sigfig() as usize;
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:>12.digits$} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:>12.digits$} {q:>2.12} {total:>10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    // Java prints the sub-bucket count; the Rust crate keeps `(buckets + 1) * sub_buckets / 2`
    // counters.
    let sub_buckets = 2 * h.distinct_values() / (h.buckets() as usize + 1);
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Row {
        value: f64,
        percentile: f64,
        total: u64,
        inverse: Option<f64>,
    }

    fn parse_rows(text: &str) -> Vec<Row> {
        text.lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                assert!(cols.len() == 3 || cols.len() == 4, "bad row {l:?}");
                Row {
                    value: cols[0].parse().unwrap(),
                    percentile: cols[1].parse().unwrap(),
                    total: cols[2].parse().unwrap(),
                    inverse: cols.get(3).map(|c| c.parse().unwrap()),
                }
            })
            .collect()
    }

    #[test]
    fn format_parses_back() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        h.record_n(1_000_000, 5).unwrap();
        let text = percentile_distribution(&h, 1.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        let rows = parse_rows(&text);
        assert!(rows.len() > 50, "only {} rows", rows.len());
        // Values, percentiles and counts never go down; the last row is 100% of the count.
        for pair in rows.windows(2) {
            assert!(pair[1].value >= pair[0].value);
            assert!(pair[1].percentile >= pair[0].percentile);
            assert!(pair[1].total >= pair[0].total);
        }
        let last = rows.last().unwrap();
        assert_eq!(last.percentile, 1.0);
        assert_eq!(last.total, h.len());
        assert!(last.inverse.is_none());
        assert_eq!(last.value, h.max() as f64);
        for row in &rows[..rows.len() - 1] {
            let inverse = row.inverse.expect("1/(1-p) on every row but the last");
            assert!((inverse - 1.0 / (1.0 - row.percentile)).abs() < 0.01 * inverse.max(1.0));
        }
        // The median row agrees with the histogram.
        let median = rows.iter().find(|r| r.percentile >= 0.5).unwrap();
        assert_eq!(median.value, h.value_at_quantile(0.5) as f64);

        let footer: Vec<&str> = lines.iter().rev().take(3).rev().copied().collect();
        assert!(footer[0].starts_with("#[Mean    = "), "{}", footer[0]);
        assert!(footer[0].contains(", StdDeviation   = "));
        assert_eq!(
            footer[1],
            format!(
                "#[Max     = {:>12.3}, Total count    = {:>12}]",
                h.max() as f64,
                h.len()
            )
        );
        assert_eq!(
            footer[2],
            format!(
                "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
                h.buckets(),
                2048
            )
        );
    }

    #[test]
    fn empty_histogram_has_header_and_footer_only() {
        let h = Histogram::<u64>::new_with_bounds(1, 1000, 3).unwrap();
        let text = percentile_distribution(&h, 1.0);
        assert!(parse_rows(&text).is_empty());
        assert_eq!(text.lines().filter(|l| l.starts_with("#[")).count(), 3);
    }
}
