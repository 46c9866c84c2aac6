//! `--html FILE`: one self-contained page a person can look at (no script, no external file,
//! works from a mail attachment): the verdict, the counts of the JSON report, the findings by
//! kind with their keys, the day's totals per currency and event type as a bar chart (inline
//! SVG), and the newest runs from `verification_runs`.
//!
//! Every figure is the JSON report's own value, printed as it is there; bar lengths are computed
//! with `Decimal` arithmetic from the totals' decimal strings (money is never a float).

use std::collections::BTreeMap;
use std::fmt::Write;

use rust_decimal::Decimal;

use crate::history::PastRun;
use crate::report::Report;

/// Findings listed on the page (all are counted).
const FINDINGS_SHOWN: usize = 500;
/// Widest bar of the chart, in pixels.
const BAR_MAX_PX: i64 = 420;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn status_colour(status: &str) -> &'static str {
    match status {
        "clean" => "#1a7f37",
        "discrepancies" => "#cf222e",
        "empty" => "#9a6700",
        _ => "#8250df",
    }
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#1f2328}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.badge{color:#fff;padding:2px 10px;border-radius:4px}\
h2{margin-top:1.6em}.muted{color:#656d76}svg text{font:12px system-ui,sans-serif}";

/// The page for `report`, with `history` (newest first).
pub fn render(report: &Report, history: &[PastRun]) -> String {
    let mut h = String::new();
    let status = report.status.as_str();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>batch-verify {date} {status}</title><style>{STYLE}</style></head><body>\
         <h1>batch-verify {date} <span class=\"badge\" id=\"status\" style=\"background:{colour}\">{status}</span></h1>\
         <p>Business day {date} ({tz}), UTC window {ws} .. {we}, against the <b>{truth}</b> truth. \
         Run <code id=\"run-id\">{run}</code>, finished {fin}, {secs} s.</p>",
        date = esc(&report.business_date),
        tz = esc(&report.time_zone),
        ws = esc(&report.window_start),
        we = esc(&report.window_end),
        truth = esc(&report.truth_source),
        run = esc(&report.run_id),
        fin = esc(&report.finished_at),
        secs = report.elapsed_ms as f64 / 1000.0,
        colour = status_colour(status),
    );
    if let Some(e) = &report.error {
        let _ = write!(h, "<p><b>Could not verify:</b> {}</p>", esc(e));
    }
    counts(&mut h, report);
    findings(&mut h, report);
    totals(&mut h, report);
    past(&mut h, history);
    h.push_str("</body></html>\n");
    h
}

fn counts(h: &mut String, r: &Report) {
    h.push_str("<h2>Checks</h2><table id=\"counts\"><tr><th>count</th><th>value</th></tr>");
    let mut rows: Vec<(&str, String)> = vec![
        ("truth_events", r.truth_events.to_string()),
        ("ledger_events", r.ledger_events.to_string()),
        ("truth_rejects", r.truth_rejects.to_string()),
        ("rejected_events", r.rejected_events.to_string()),
        ("truth_resends", r.truth_resends.to_string()),
        ("rejects_undated", r.rejects_undated.to_string()),
        ("beyond_horizon", r.beyond_horizon.to_string()),
        ("duplicates", r.duplicates.to_string()),
        ("missing", r.missing.to_string()),
        ("phantom", r.phantom.to_string()),
        ("amount_mismatches", r.amount_mismatches.to_string()),
        ("content_mismatches", r.content_mismatches.to_string()),
        ("totals_mismatches", r.totals_mismatches.to_string()),
        ("balances_checked", r.balances_checked.to_string()),
        ("balance_mismatches", r.balance_mismatches.to_string()),
        ("commits_checked", r.commits_checked.to_string()),
        ("offset_gaps", r.offset_gaps.to_string()),
    ];
    if let Some(lag) = r.job_lag_offsets {
        rows.push(("job_lag_offsets", lag.to_string()));
        rows.push(("missing_not_consumed", r.missing_not_consumed.to_string()));
    }
    for (name, value) in rows {
        let _ = write!(
            h,
            "<tr><td>{name}</td><td class=\"n\" id=\"count-{name}\">{value}</td></tr>"
        );
    }
    h.push_str("</table>");
}

fn findings(h: &mut String, r: &Report) {
    h.push_str("<h2>Findings by kind</h2>");
    if r.discrepancies_by_kind.is_empty() {
        h.push_str("<p id=\"no-findings\">None.</p>");
        return;
    }
    h.push_str("<table id=\"kinds\"><tr><th>kind</th><th>count</th></tr>");
    for (kind, n) in &r.discrepancies_by_kind {
        let _ = write!(
            h,
            "<tr><td>{k}</td><td class=\"n\" id=\"kind-{k}\">{n}</td></tr>",
            k = esc(kind)
        );
    }
    h.push_str("</table><table id=\"findings\"><tr><th>kind</th><th>event</th><th>trip</th><th>position</th><th>detail</th></tr>");
    for d in r.discrepancies.iter().take(FINDINGS_SHOWN) {
        let position = match (d.kafka_partition, d.kafka_offset) {
            (Some(p), Some(o)) => format!("{p}@{o}"),
            _ => String::new(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            d.kind.as_str(),
            esc(d.event_id.as_deref().unwrap_or("")),
            esc(d.trip_id.as_deref().unwrap_or("")),
            position,
            esc(&d.detail)
        );
    }
    h.push_str("</table>");
    let shown = r.discrepancies.len().min(FINDINGS_SHOWN);
    let total: u64 = r.discrepancies_by_kind.values().sum();
    if (shown as u64) < total {
        let _ = write!(
            h,
            "<p class=\"muted\">{shown} of {total} shown; all kept ones are in the JSON report and verification_discrepancies.</p>"
        );
    }
}

/// The totals table, then one bar chart per currency: truth and ledger amount per event type.
fn totals(h: &mut String, r: &Report) {
    h.push_str("<h2>Totals of the day</h2>");
    if r.totals.is_empty() {
        h.push_str("<p>No events.</p>");
        return;
    }
    h.push_str("<table id=\"totals\"><tr><th>type</th><th>currency</th><th>truth events</th><th>truth amount</th><th>ledger rows</th><th>ledger amount</th></tr>");
    for t in &r.totals {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&t.event_type),
            esc(&t.currency),
            t.truth_count,
            esc(&t.truth_amount),
            t.ledger_count,
            esc(&t.ledger_amount)
        );
    }
    h.push_str("</table>");
    let mut by_currency: BTreeMap<&str, Vec<&crate::report::TotalLine>> = BTreeMap::new();
    for t in &r.totals {
        by_currency.entry(&t.currency).or_default().push(t);
    }
    for (currency, lines) in by_currency {
        chart(h, currency, &lines);
    }
}

fn amount(s: &str) -> Decimal {
    s.parse::<Decimal>().unwrap_or_default().abs()
}

fn chart(h: &mut String, currency: &str, lines: &[&crate::report::TotalLine]) {
    let max = lines
        .iter()
        .flat_map(|t| [amount(&t.truth_amount), amount(&t.ledger_amount)])
        .max()
        .unwrap_or_default();
    let width = |s: &str| -> i64 {
        if max.is_zero() {
            return 0;
        }
        let px = amount(s) * Decimal::from(BAR_MAX_PX) / max;
        i64::try_from(px.round()).unwrap_or(0).max(1)
    };
    let row_h = 34;
    let height = row_h * lines.len() as i64 + 10;
    let _ = write!(
        h,
        "<h3>{c}</h3><svg id=\"chart-{c}\" width=\"{w}\" height=\"{height}\" role=\"img\" aria-label=\"totals in {c}\">",
        c = esc(currency),
        w = BAR_MAX_PX + 330,
    );
    for (i, t) in lines.iter().enumerate() {
        let y = i as i64 * row_h + 4;
        let _ = write!(
            h,
            "<text x=\"0\" y=\"{ty}\">{name}</text>\
             <rect x=\"110\" y=\"{y}\" width=\"{tw}\" height=\"13\" fill=\"#0969da\"><title>truth {ta}</title></rect>\
             <rect x=\"110\" y=\"{y2}\" width=\"{lw}\" height=\"13\" fill=\"#8c959f\"><title>ledger {la}</title></rect>\
             <text x=\"{tx}\" y=\"{ty}\">truth {ta}</text><text x=\"{lx}\" y=\"{ly}\">ledger {la}</text>",
            ty = y + 11,
            y2 = y + 15,
            ly = y + 26,
            name = esc(&t.event_type),
            tw = width(&t.truth_amount),
            lw = width(&t.ledger_amount),
            tx = 116 + width(&t.truth_amount),
            lx = 116 + width(&t.ledger_amount),
            ta = esc(&t.truth_amount),
            la = esc(&t.ledger_amount),
        );
    }
    h.push_str("</svg>");
}

fn past(h: &mut String, history: &[PastRun]) {
    h.push_str("<h2>Recent runs</h2>");
    if history.is_empty() {
        h.push_str("<p>None recorded.</p>");
        return;
    }
    h.push_str("<table id=\"history\"><tr><th>finished</th><th>business day</th><th>status</th><th>truth</th><th>events</th><th>duplicates</th><th>missing</th><th>phantom</th><th>balance mismatches</th></tr>");
    for r in history {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td style=\"color:{}\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            r.finished_at.format("%Y-%m-%d %H:%M:%SZ"),
            r.business_date,
            status_colour(&r.status),
            esc(&r.status),
            esc(&r.truth_source),
            r.truth_events,
            r.duplicates,
            r.missing,
            r.phantom,
            r.balance_mismatches
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
