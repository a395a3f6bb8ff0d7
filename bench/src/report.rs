//! `--report DIR`: one self-contained HTML page (inline SVG from plotters, no external assets)
//! that explains a run to someone who was not there: what ran, how fast, how slow the slow
//! batches were, how steady it was, what the server answered, and whether the books balance.

use crate::run_mode::RunSummary;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::fmt::Write as _;

pub struct Inputs<'a> {
    pub summary: &'a RunSummary,
    pub batch_latency_us: &'a Histogram<u64>,
    pub batch: usize,
}

const WIDTH: u32 = 900;
const HEIGHT: u32 = 420;
const LINE: RGBColor = RGBColor(31, 119, 180);
const ACCENT: RGBColor = RGBColor(214, 39, 40);
const GRID: RGBColor = RGBColor(225, 225, 225);
const MUTED: RGBColor = RGBColor(150, 150, 150);

pub fn render(inputs: &Inputs<'_>) -> String {
    let s = &inputs.summary;
    let base = &s.summary;
    let passed = base.check.passed();
    let ok = base.results.get("ok").copied().unwrap_or(0);
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>wallet-bench run: {tps} transfers/s</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }}
h1 {{ font-size: 1.6em; margin-bottom: 0.2em; }}
h2 {{ margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }}
.headline {{ display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }}
.tile {{ border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; }}
.tile .v {{ font-size: 1.5em; font-weight: 600; }}
.tile .k {{ color: #666; font-size: 0.85em; }}
.pass {{ background: #e7f6e7; border-color: #7c7; }}
.fail {{ background: #fde8e8; border-color: #e66; }}
.warn {{ background: #fff5d6; border-color: #e0b84c; padding: 0.6em 1em; border-radius: 6px; border: 1px solid; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; font-size: 0.92em; }}
th {{ background: #f5f5f5; }}
.how {{ color: #444; background: #f7f9fc; border-left: 3px solid #1f77b4; padding: 0.5em 0.9em; }}
svg {{ max-width: 100%; height: auto; }}
pre {{ background: #f5f5f5; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }}
</style></head><body>
<h1>walletd benchmark: {tps} transfers/s</h1>
<p>{mode_sentence}</p>
<div class="headline">
<div class="tile"><div class="v">{tps}</div><div class="k">transfers/s (all answers)</div></div>
<div class="tile"><div class="v">{ok_tps}</div><div class="k">transfers/s answered <code>ok</code></div></div>
<div class="tile"><div class="v">{p50}</div><div class="k">p50 batch latency</div></div>
<div class="tile"><div class="v">{p99}</div><div class="k">p99 batch latency</div></div>
<div class="tile"><div class="v">{p999}</div><div class="k">p99.9 batch latency</div></div>
<div class="tile {check_class}"><div class="v">{check_word}</div><div class="k">consistency check</div></div>
</div>
"#,
        tps = thousands(base.transfers_per_sec.round() as u64),
        ok_tps = thousands(if base.seconds > 0.0 {
            (ok as f64 / base.seconds).round() as u64
        } else {
            0
        }),
        p50 = micros(base.latency_us.p50),
        p99 = micros(base.latency_us.p99),
        p999 = micros(base.latency_us.p999),
        check_class = if passed { "pass" } else { "fail" },
        check_word = if passed { "PASS" } else { "FAIL" },
        mode_sentence = escape(&mode_sentence(inputs)),
    );
    let mut warnings = Vec::new();
    if !s.errors.is_empty() {
        let failed: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        warnings.push(format!(
            "Some batches failed after the client's retries ({}); their transfers are in no count above, because their outcome is unknown.",
            failed.join(", ")
        ));
    }
    if s.interrupted {
        warnings.push(
            "The run was interrupted (Ctrl-C): the numbers cover only the part that ran.".into(),
        );
    }
    if let Some(open) = &s.open_loop {
        if open.delayed_by_cap > 0 {
            warnings.push(format!(
                "{} batches were due while {} batches were already outstanding, so they went out late; their latency still counts from when they were due.",
                open.delayed_by_cap,
                open.max_outstanding_seen
            ));
        }
    }
    for w in warnings {
        let _ = writeln!(page, r#"<p class="warn">{}</p>"#, escape(&w));
    }
    let _ = write!(
        page,
        r#"<h2>The consistency check</h2>
<p class="how">After the load, the bench reads everything back <em>through the protocol</em>, as any client would.
<b>Conserved</b>: the balances (plus held amounts) of all {accounts} accounts, issuers included, add up to zero, so no money was made or lost.
<b>Negative balances</b>: wallets below their floor (must be 0).
<b>Missing acks</b>: transfers the server acknowledged as <code>ok</code> that it does not have as applied afterwards (absent, or a cross-partition transfer found pending or cancelled; must be 0); {checked} of the {ok_total} transfers acknowledged <code>ok</code> (warm-up included) were looked up.
<b>Unsettled holds</b>: accounts still holding money for a cross-partition transfer after the check waited 30 s for them to settle (must be 0).</p>
<table><tr><th>conserved</th><th>negative balances</th><th>missing acks</th><th>unsettled holds</th><th>result</th></tr>
<tr><td>{conserved}</td><td>{negative}</td><td>{missing}</td><td>{unsettled}</td><td><b>{check_word}</b></td></tr></table>
"#,
        accounts = thousands(base.config["accounts"].as_u64().unwrap_or(0) + s.partitions as u64),
        checked = thousands(s.checked_acks),
        ok_total = thousands(s.acknowledged_ok),
        conserved = base.check.conserved,
        negative = base.check.negative_balances,
        missing = base.check.missing_acks,
        unsettled = base.check.unsettled_holds,
        check_word = if passed { "PASS" } else { "FAIL" },
    );

    let _ = write!(
        page,
        r#"<h2>Latency by percentile</h2>
{svg}
<p class="how"><b>How to read it.</b> Each point says: this share of batches got their reply within this time.
Read the curve from left to right: the left end is the typical batch, the right end the rare slow ones.
The horizontal axis is stretched so that the tail gets room: 90% means 1 batch in 10 was slower, 99% 1 in 100, 99.9% 1 in 1,000, 99.99% 1 in 10,000.
A curve that stays flat and then shoots up at the right is normal: most batches are quick, a few wait (for a disk flush, a full queue, or the other process on the same core).
Latency runs from the moment a batch of {batch} transfers was {start_word} until its reply, and walletd replies only once the batch is durable on disk.
Every transfer in a batch gets its batch's latency, so the per-transfer percentiles are the same as the per-batch ones here
(per transfer: p50 {tp50}, p99 {tp99}, p99.9 {tp999}).
{count} batches were measured; percentiles beyond 1 in {count} are not backed by data and are not drawn.</p>
"#,
        svg = latency_plot(inputs.batch_latency_us).unwrap_or_else(plot_error),
        batch = thousands(inputs.batch as u64),
        start_word = if s.open_loop.is_some() {
            "due to be sent (open loop: even if the bench could not send it on time)"
        } else {
            "ready to send"
        },
        tp50 = micros(s.transfer_latency_us.p50),
        tp99 = micros(s.transfer_latency_us.p99),
        tp999 = micros(s.transfer_latency_us.p999),
        count = thousands(inputs.batch_latency_us.len()),
    );

    let _ = write!(
        page,
        r#"<h2>Throughput over time</h2>
{svg}
<p class="how"><b>How to read it.</b> Each point is one second of the measurement: how many transfers got an answer (any result code) in that second.
The dashed line is the average over the whole run ({tps} transfers/s).
A flat line means the server kept a steady pace; dips are stalls (a slow disk flush, a snapshot, the bench and the server fighting over the same cores).
{loop_sentence}
The warm-up ({warmup} transfers in the first {warmup_s} s) is not shown and not counted.</p>
"#,
        svg = throughput_plot(&s.throughput_series, base.transfers_per_sec, base.seconds)
            .unwrap_or_else(plot_error),
        tps = thousands(base.transfers_per_sec.round() as u64),
        loop_sentence = match &s.open_loop {
            Some(open) => format!(
                "This was an open-loop run: the bench offered {} transfers/s on a fixed schedule; a line below that means the server could not keep up and a queue (and latency) built up.",
                thousands(open.target_transfers_per_sec.round() as u64)
            ),
            None => "This was a closed-loop run: the bench sent a new batch whenever one came back, so the line shows the most the server (and the bench beside it) could do.".into(),
        },
        warmup = thousands(s.warmup_transfers),
        warmup_s = base.config["warmup"].as_f64().unwrap_or(0.0),
    );

    let _ = write!(
        page,
        r#"<h2>Latency over time</h2>
{svg}
<p class="how"><b>How to read it.</b> Each second of the measurement has three points, for the batches answered in that second:
the median (p50), the p99 and the slowest one. The scale is logarithmic: each grid step up is a multiple, not an addition.
A p99 that tracks the median closely means the tail is steady; a lone spike of the slowest batch is one stall (a slow disk flush, a snapshot, a leader change) and when it happened,
while a p99 far above the median in every second means the slow batches are spread over the whole run (queueing, contention for the cores).
A second in which no batch was answered has no point; its batches show as slow ones in the second that answered them.</p>
"#,
        svg = latency_over_time_plot(&s.throughput_series, base.seconds).unwrap_or_else(plot_error),
    );

    let _ = write!(
        page,
        r#"<h2>Result codes</h2>
{svg}
<p class="how"><b>How to read it.</b> How the server answered each measured transfer; every answer counts in the throughput above, not only <code>ok</code>.
<code>ok</code>: applied. <code>insufficient_funds</code>: the source wallet would have gone below its floor.
<code>cross_partition_unsupported</code>: the two wallets live in different partitions, which this build cannot do yet (no money moves).
<code>busy</code>: the server was overloaded and asked the client to retry later.</p>
"#,
        svg = results_plot(&base.results).unwrap_or_else(plot_error),
    );

    let _ = write!(
        page,
        "<h2>What ran</h2>\n<table><tr><th>setting</th><th>value</th></tr>\n"
    );
    if let Some(config) = base.config.as_object() {
        for (key, value) in config {
            let shown = match value {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let _ = writeln!(
                page,
                "<tr><td>--{}</td><td>{}</td></tr>",
                escape(&key.replace('_', "-")),
                escape(&shown)
            );
        }
    }
    let m = &base.machine;
    let _ = write!(
        page,
        r#"</table>
<h3>Machine</h3>
<table>
<tr><td>cores</td><td>{cores}</td></tr>
<tr><td>cpu</td><td>{cpu}</td></tr>
<tr><td>kernel</td><td>{kernel}</td></tr>
<tr><td>commit</td><td>{commit}</td></tr>
</table>
<p>The bench and the server share these cores, so the numbers are what this whole machine did, not walletd alone.</p>
<h2>Raw summary</h2>
<pre>{json}</pre>
</body></html>
"#,
        cores = m.cores,
        cpu = escape(&m.cpu),
        kernel = escape(&m.kernel),
        commit = escape(&m.commit),
        json = escape(&serde_json::to_string_pretty(s).unwrap_or_default()),
    );
    page
}

fn mode_sentence(inputs: &Inputs<'_>) -> String {
    let s = inputs.summary;
    let c = &s.summary.config;
    let loop_part = match &s.open_loop {
        Some(open) => format!(
            "open loop at {} transfers/s offered",
            thousands(open.target_transfers_per_sec.round() as u64)
        ),
        None => format!(
            "closed loop, {} connections x {} batches in flight",
            c["connections"], c["pipeline"]
        ),
    };
    let zipf = c["zipf"].as_f64().unwrap_or(0.0);
    format!(
        "{} transfers in {:.1} s between {} wallets ({} partitions, {}, batches of {}, {}, {}% cross-partition), measured after a {} s warm-up.",
        thousands(s.summary.transfers),
        s.summary.seconds,
        thousands(c["accounts"].as_u64().unwrap_or(0)),
        s.partitions,
        if zipf > 0.0 {
            format!("Zipf-skewed accounts with exponent {zipf}")
        } else {
            "accounts picked uniformly".into()
        },
        thousands(inputs.batch as u64),
        loop_part,
        c["cross_partition_ratio"].as_f64().unwrap_or(0.0) * 100.0,
        c["warmup"].as_f64().unwrap_or(0.0),
    )
}

fn plot_error(e: String) -> String {
    format!("<p class=\"warn\">(plot failed: {})</p>", escape(&e))
}

/// HdrHistogram's classic plot: x = 1/(1-percentile) on a log axis, labelled as percentiles.
fn latency_plot(h: &Histogram<u64>) -> Result<String, String> {
    if h.is_empty() {
        return Ok("<p>(no batches measured)</p>".into());
    }
    // Draw as far right as there is data for: 10^4 (99.99%) at least, 10^6 at most.
    let decades = ((h.len() as f64).log10().floor() as i32).clamp(4, 6);
    let x_max = 10f64.powi(decades);
    let (scale, unit) = if h.value_at_quantile(0.999) >= 10_000 {
        (1000.0, "ms")
    } else {
        (1.0, "us")
    };
    let mut points: Vec<(f64, f64)> = h
        .iter_quantiles(crate::hgrm::TICKS_PER_HALF_DISTANCE)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            (
                1.0 / (1.0 - v.quantile_iterated_to()),
                v.value_iterated_to() as f64 / scale,
            )
        })
        .filter(|(x, _)| *x <= x_max)
        .collect();
    // The curve ends where the data ends: at the max, at 1 in `count`.
    let data_end = (h.len() as f64).min(x_max);
    points.push((data_end, h.max() as f64 / scale));
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1 + 1e-9;
    let keys: Vec<f64> = (0..=decades).map(|d| 10f64.powi(d)).collect();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .caption("Batch latency by percentile", ("sans-serif", 20))
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((1f64..x_max).log_scale().with_key_points(keys), 0f64..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .x_desc("percentile (log scale: each step right is 10x rarer)")
            .y_desc(format!("latency ({unit})"))
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(points.clone(), LINE.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
            let x = 1.0 / (1.0 - q);
            if x > data_end {
                continue;
            }
            let y = h.value_at_quantile(q) as f64 / scale;
            let marker = EmptyElement::at((x, y))
                + Circle::new((0, 0), 4, ACCENT.filled())
                + Text::new(
                    format!("{name} {} {unit}", one_decimal_below_100(y)),
                    (-10, -22),
                    ("sans-serif", 13).into_font().color(&ACCENT),
                );
            chart.draw_series([marker]).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn one_decimal_below_100(y: f64) -> String {
    if y < 100.0 {
        format!("{y:.1}")
    } else {
        format!("{y:.0}")
    }
}

fn percentile_label(x: f64) -> String {
    if x <= 1.0 + 1e-9 {
        return "0%".into();
    }
    let p = 100.0 * (1.0 - 1.0 / x);
    let digits = (x.log10().round() as usize).saturating_sub(2);
    format!("{p:.digits$}%")
}

fn throughput_plot(
    series: &[crate::run_mode::SeriesPoint],
    mean: f64,
    seconds: f64,
) -> Result<String, String> {
    if series.is_empty() {
        return Ok("<p>(no measurement)</p>".into());
    }
    let y_max = series
        .iter()
        .map(|p| p.transfers_per_sec)
        .fold(mean, f64::max)
        * 1.15
        + 1.0;
    let x_max = seconds.max(series.last().map_or(1.0, |p| p.t)).max(1.0);
    let (scale, unit) = if y_max >= 10_000.0 {
        (1000.0, "thousand transfers/s")
    } else {
        (1.0, "transfers/s")
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .caption("Throughput over time", ("sans-serif", 20))
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max / scale)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .x_desc("seconds since the measurement started")
            .y_desc(unit)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        let points: Vec<(f64, f64)> = series
            .iter()
            .map(|p| (p.t, p.transfers_per_sec / scale))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), LINE.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, LINE.filled())))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, mean / scale), (x_max, mean / scale)],
                6,
                4,
                ACCENT.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series([EmptyElement::at((0.0, mean / scale))
                + Text::new(
                    format!("average {:.0}", mean / scale),
                    (6, -18),
                    ("sans-serif", 13).into_font().color(&ACCENT),
                )])
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Which of a second's latencies a line draws.
type PointValue = fn(&crate::run_mode::SeriesPoint) -> u64;

/// Per second of the measurement: the batches' p50, p99 and slowest, on a log scale so that
/// a one-second stall and a 5 ms median fit on one page.
fn latency_over_time_plot(
    series: &[crate::run_mode::SeriesPoint],
    seconds: f64,
) -> Result<String, String> {
    // A second without answers has no latency to draw (its stall shows in the next second).
    let answered: Vec<&crate::run_mode::SeriesPoint> =
        series.iter().filter(|p| p.batch_max_us > 0).collect();
    if answered.is_empty() {
        return Ok("<p>(no measurement)</p>".into());
    }
    let ms = |us: u64| us.max(1) as f64 / 1000.0;
    let y_min = answered
        .iter()
        .map(|p| ms(p.batch_p50_us))
        .fold(f64::MAX, f64::min)
        / 2.0;
    let y_max = answered
        .iter()
        .map(|p| ms(p.batch_max_us))
        .fold(0.0, f64::max)
        * 2.0;
    let x_max = seconds.max(answered.last().map_or(1.0, |p| p.t)).max(1.0);
    let lines: [(&str, RGBColor, PointValue); 3] = [
        ("slowest", MUTED, |p| p.batch_max_us),
        ("p99", ACCENT, |p| p.batch_p99_us),
        ("p50", LINE, |p| p.batch_p50_us),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .caption("Batch latency over time", ("sans-serif", 20))
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(
                0f64..x_max,
                (y_min..y_max)
                    .log_scale()
                    .with_key_points(one_two_five_between(y_min, y_max)),
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .x_desc("seconds since the measurement started")
            .y_desc("batch latency (ms, log scale)")
            // 1, 2, 5 steps: printed as written (0.5, 2, 50), rounded off float noise.
            .y_label_formatter(&|y| format!("{}", (y * 1000.0).round() / 1000.0))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (name, color, value) in lines {
            let points: Vec<(f64, f64)> = answered.iter().map(|p| (p.t, ms(value(p)))).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(GRID)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// 0.1, 0.2, 0.5, 1, 2, 5, 10, ... within `low..=high`: grid lines a reader can add up.
fn one_two_five_between(low: f64, high: f64) -> Vec<f64> {
    let mut keys = Vec::new();
    let mut decade = 10f64.powf(low.log10().floor());
    while decade <= high {
        for step in [1.0, 2.0, 5.0] {
            let key = decade * step;
            if (low..=high).contains(&key) {
                keys.push(key);
            }
        }
        decade *= 10.0;
    }
    keys
}

fn results_plot(results: &std::collections::BTreeMap<String, u64>) -> Result<String, String> {
    if results.is_empty() {
        return Ok("<p>(no answers measured)</p>".into());
    }
    // Largest first, from the top.
    let mut bars: Vec<(&str, u64)> = results.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    bars.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let total: u64 = bars.iter().map(|b| b.1).sum();
    let max = bars[0].1 as f64;
    let n = bars.len();
    // Bar `i` (0 = largest) gets the y band `row(i) .. row(i) + 100` (integer coordinates:
    // plotters formats those without fuss).
    let row = |i: usize| 100 * (n - i - 1) as i32;
    let height = 130 + 50 * n as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let centers: Vec<i32> = (0..n).map(|i| row(i) + 50).collect();
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .caption("Answers by result code", ("sans-serif", 20))
            .x_label_area_size(45)
            .y_label_area_size(230)
            .build_cartesian_2d(
                0f64..max * 1.35,
                (0..100 * n as i32).with_key_points(centers),
            )
            .map_err(|e| e.to_string())?;
        let names: Vec<&str> = bars.iter().map(|b| b.0).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .x_desc("transfers")
            .x_label_formatter(&|x| short_count(*x))
            .y_label_formatter(&|y| {
                let from_top = n.saturating_sub(1 + (*y).max(0) as usize / 100);
                names
                    .get(from_top)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (name, count))| {
                let color = if *name == "ok" { LINE } else { ACCENT };
                Rectangle::new(
                    [(0.0, row(i) + 18), (*count as f64, row(i) + 82)],
                    color.mix(0.85).filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, count))| {
                EmptyElement::at((*count as f64, row(i) + 50))
                    + Text::new(
                        format!(
                            "{} ({:.1}%)",
                            thousands(*count),
                            100.0 * *count as f64 / total as f64
                        ),
                        (6, -8),
                        ("sans-serif", 14).into_font(),
                    )
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn short_count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} us")
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let head = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = digits[..head].to_string();
    for group in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).expect("ascii digits"));
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10000.0), "99.99%");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
        assert_eq!(thousands(123456), "123,456");
        assert_eq!(thousands(0), "0");
        assert_eq!(escape("<a&b>"), "&lt;a&amp;b&gt;");
    }
}

#[cfg(test)]
mod page_tests {
    use super::*;
    use crate::run_mode::{OpenLoopStats, SeriesPoint};
    use crate::summary::{Check, Latency, Summary};

    fn sample() -> (RunSummary, Histogram<u64>) {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            h.record(2_000 + rng.u64(..3_000) + if rng.f64() < 0.01 { 40_000 } else { 0 })
                .unwrap();
        }
        let results = [
            ("ok", 900_000u64),
            ("cross_partition_unsupported", 95_000),
            ("insufficient_funds", 5_000),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let summary = RunSummary {
            summary: Summary {
                mode: "run",
                config: serde_json::json!({
                    "accounts": 1000, "batch": 100, "connections": 2, "pipeline": 4,
                    "warmup": 2.0, "zipf": 1.1, "cross_partition_ratio": 0.1,
                    "report": "<dir & co>"
                }),
                machine: crate::machine::Machine {
                    cores: 2,
                    kernel: "6.1".into(),
                    commit: "abc".into(),
                    cpu: "test cpu".into(),
                },
                transfers: 1_000_000,
                seconds: 10.0,
                transfers_per_sec: 100_000.0,
                latency_us: Latency::of(&h),
                results,
                check: Check {
                    conserved: true,
                    negative_balances: 0,
                    missing_acks: 0,
                    unsettled_holds: 0,
                },
            },
            transfer_latency_us: Latency::of(&h),
            partitions: 2,
            warmup_transfers: 1234,
            throughput_series: (1..=10)
                .map(|t| SeriesPoint {
                    t: t as f64,
                    transfers_per_sec: 90_000.0 + 2_000.0 * t as f64,
                    batch_p50_us: 2_500 + 10 * t,
                    batch_p99_us: 4_900 + if t == 7 { 40_000 } else { 0 },
                    batch_max_us: 5_000 + if t == 7 { 60_000 } else { 0 },
                })
                .collect(),
            errors: [("timeout".to_string(), 2u64)].into_iter().collect(),
            open_loop: Some(OpenLoopStats {
                target_transfers_per_sec: 100_000.0,
                scheduled_batches: 10_000,
                delayed_by_cap: 3,
                max_outstanding_seen: 10_000,
            }),
            acknowledged_ok: 900_000,
            checked_acks: 900_000,
            interrupted: false,
        };
        (summary, h)
    }

    #[test]
    fn page_is_self_contained_and_has_every_part() {
        let (summary, h) = sample();
        let page = render(&Inputs {
            summary: &summary,
            batch_latency_us: &h,
            batch: 100,
        });
        if let Ok(path) = std::env::var("WALLET_BENCH_SAMPLE_REPORT") {
            std::fs::write(path, &page).unwrap();
        }
        assert_eq!(page.matches("<svg").count(), 4, "four plots");
        for absent in ["src=\"http", "href=\"http", "<script", "plot failed"] {
            assert!(!page.contains(absent), "page contains {absent}");
        }
        for present in [
            "100,000 transfers/s",
            "PASS",
            "How to read it",
            "Batch latency over time",
            "99.9%",
            "cross_partition_unsupported",
            "&lt;dir &amp; co&gt;",
            "timeout: 2",
            "test cpu",
        ] {
            assert!(page.contains(present), "page lacks {present}");
        }
    }
}
