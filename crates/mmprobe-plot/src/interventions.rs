//! The report's Interventions section, from RESULTS/interventions.parquet:
//! what erasing or steering a concept's direction at one layer does to what
//! the model answers, next to how readable the concept is there.

use std::cmp::Ordering;
use std::fmt::Write as _;

use mmprobe_analysis::tables::{InterventionRow, ProbeRow};
use mmprobe_store::{Partition, Selector, Site, Tower};

use crate::figures::{AlphaCurves, Bar, BarPanel, Curve, CurvePanel, CurvePoint, EffectBars, EffectByLayer, slug};
use crate::report::{Fig, Job, Placed, chance_label, cross_validated, esc, figure_html, fmt, point, tower_panels};

/// Metrics in reading order: steering's headline first.
const METRICS: [&str; 6] =
    ["target_rate", "zero_shot_accuracy", "vqa_accuracy", "caption_similarity", "answer_log_prob", "probe_accuracy"];

fn metric_rank(m: &str) -> usize {
    METRICS.iter().position(|x| *x == m).unwrap_or(METRICS.len())
}

fn metric_words(m: &str) -> String {
    match m {
        "target_rate" => "target rate".into(),
        "zero_shot_accuracy" => "zero-shot accuracy".into(),
        "vqa_accuracy" => "VQA accuracy".into(),
        "caption_similarity" => "caption similarity".into(),
        "answer_log_prob" => "answer log-probability".into(),
        "probe_accuracy" => "probe accuracy".into(),
        other => other.replace('_', " "),
    }
}

/// A share in [0, 1]: its axis runs from 0 to 1 so panels compare.
fn is_rate(m: &str) -> bool {
    matches!(m, "target_rate" | "zero_shot_accuracy" | "vqa_accuracy" | "probe_accuracy")
}

fn is_steer(r: &InterventionRow) -> bool {
    r.method == "steer"
}

/// The order of the table and of the figures: concept, erase before steer,
/// direction, where, target, alpha, metric, and the intervened concept
/// first among the measured ones.
fn order(a: &InterventionRow, b: &InterventionRow) -> Ordering {
    let own = |r: &InterventionRow| r.measured_concept != r.concept;
    a.concept
        .cmp(&b.concept)
        .then(is_steer(a).cmp(&is_steer(b)))
        .then(a.direction.cmp(&b.direction))
        .then(a.partition.cmp(&b.partition))
        .then(a.positions.cmp(&b.positions))
        .then(a.target.cmp(&b.target))
        .then(a.alpha.total_cmp(&b.alpha))
        .then(metric_rank(&a.metric).cmp(&metric_rank(&b.metric)))
        .then(a.metric.cmp(&b.metric))
        .then(own(a).cmp(&own(b)))
        .then(a.measured_concept.cmp(&b.measured_concept))
}

/// Groups `rows` by `key`, groups and their rows in the order met.
fn group<'a, K: PartialEq>(
    rows: &[&'a InterventionRow],
    key: impl Fn(&'a InterventionRow) -> K,
) -> Vec<(K, Vec<&'a InterventionRow>)> {
    let mut out: Vec<(K, Vec<&InterventionRow>)> = Vec::new();
    for &r in rows {
        let k = key(r);
        match out.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(r),
            None => out.push((k, vec![r])),
        }
    }
    out
}

/// One edit: everything but the metric and what was measured.
#[derive(PartialEq)]
struct Edit<'a> {
    concept: &'a str,
    method: &'a str,
    direction: &'a str,
    partition: Partition,
    positions: &'a str,
    target: &'a str,
    alpha: u64,
}

fn edit(r: &InterventionRow) -> Edit<'_> {
    Edit {
        concept: &r.concept,
        method: &r.method,
        direction: &r.direction,
        partition: r.partition,
        positions: &r.positions,
        target: &r.target,
        alpha: r.alpha.to_bits(),
    }
}

/// "vision resid 3 mean, all positions"
fn place(r: &InterventionRow) -> String {
    let p = r.partition;
    format!("{} {} {} {}, {} positions", p.tower, p.site, p.layer, p.selector, r.positions)
}

/// 2.5, 4, 0.25: no trailing zeros.
fn alpha_text(a: f64) -> String {
    format!("{a:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
}

/// "erasing colour (leace)", "steering colour toward red (diff-means, α = 2)"
fn what(r: &InterventionRow, with_alpha: bool) -> String {
    if is_steer(r) {
        let alpha = if with_alpha { format!(", α = {}", alpha_text(r.alpha)) } else { String::new() };
        format!("steering {} toward {} ({}{alpha})", r.concept, r.target, r.direction)
    } else {
        format!("erasing {} ({})", r.concept, r.direction)
    }
}

fn section_id(concept: &str) -> String {
    format!("iv-{}", slug(concept))
}

/// The figure kinds, in the order the section shows them.
const KINDS: [(&str, &str); 3] =
    [("layers", "Effect by layer"), ("selectivity", "Selectivity"), ("alpha", "Answers against steering strength")];

fn kind_section(concept: &str, kind: &str) -> String {
    format!("{}-{kind}", section_id(concept))
}

/// The concept's probe curves along `tower`'s `site`: on the selectors the
/// edits were fit on, else on the tower's best selector; with a note saying which.
fn probe_curves<'a>(
    probes: &'a [ProbeRow],
    concept: &str,
    tower: Tower,
    site: Site,
    selectors: &[Selector],
) -> (Vec<Curve>, Option<&'a ProbeRow>, String) {
    let rows: Vec<&ProbeRow> = probes
        .iter()
        .filter(|p| {
            p.concept == concept
                && p.partition.tower == tower
                && p.partition.site == site
                && cross_validated(p)
                && p.probe.linear()
                && p.skipped.is_none()
                && p.score().is_some_and(f64::is_finite)
        })
        .collect();
    let fitted: Vec<&ProbeRow> = rows.iter().filter(|p| selectors.contains(&p.partition.selector)).copied().collect();
    let (chosen, note) = if !fitted.is_empty() {
        (fitted, "on the selector the edit was fit on".to_string())
    } else {
        let best = rows.iter().max_by(|a, b| a.score().unwrap_or(0.0).total_cmp(&b.score().unwrap_or(0.0)));
        let Some(best) = best.map(|b| b.partition.selector) else { return (Vec::new(), None, String::new()) };
        let fit: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
        (
            rows.iter().filter(|p| p.partition.selector == best).copied().collect(),
            format!("no probe on the fit selector ({}), so the {best} selector, the tower's best", fit.join(", ")),
        )
    };
    let first = chosen.first().copied();
    let curves = tower_panels(&chosen, |r| format!("{} {}", r.partition.site, r.partition.selector), point, |_| false)
        .into_iter()
        .flat_map(|p| p.curves)
        .collect();
    (curves, first, note)
}

/// Erasure: the intervened concept's own change by layer, per tower and
/// metric, above its probe curve.
fn layer_figures(rows: &[&InterventionRow], probes: &[ProbeRow]) -> Vec<Fig> {
    let own: Vec<&InterventionRow> =
        rows.iter().filter(|r| !is_steer(r) && r.measured_concept == r.concept).copied().collect();
    let mut figs = Vec::new();
    for ((c, tower, metric), rs) in group(&own, |r| (r.concept.clone(), r.partition.tower, r.metric.clone())) {
        let series = group(&rs, |r| (r.direction.clone(), r.partition.site, r.partition.selector, r.positions.clone()));
        let effect: Vec<Curve> = series
            .iter()
            .map(|((direction, _, _, positions), v)| {
                let mut v = v.clone();
                v.sort_by_key(|r| r.partition.layer);
                Curve {
                    label: format!("erase ({direction}), {positions} positions"),
                    points: v
                        .iter()
                        .map(|r| CurvePoint {
                            layer: r.partition.layer as f64,
                            score: r.effect(),
                            ci_low: Some(r.ci_low),
                            ci_high: Some(r.ci_high),
                            control: None,
                        })
                        .collect(),
                }
            })
            .collect();
        let site = rs[0].partition.site;
        let mut selectors: Vec<Selector> = rs.iter().map(|r| r.partition.selector).collect();
        selectors.sort();
        selectors.dedup();
        let (probe, first, note) = probe_curves(probes, &c, tower, site, &selectors);
        let m = metric_words(&metric);
        let n = rs.iter().map(|r| r.n).max().unwrap_or(0);
        let probe_text = if probe.is_empty() {
            format!(
                " No cross-validated linear probe of {} on the {tower} tower in probes.parquet, so no probe panel.",
                esc(&c)
            )
        } else {
            format!(
                " Bottom: how well a linear probe reads {c} from the same layers (held-out score, shaded: its 95% \
                 interval; {note}). An erasure that hurts most where the probe reads best means the model uses the \
                 direction the probe found; a layer that reads well but loses nothing when erased holds the concept \
                 without the answer depending on it.",
                c = esc(&c)
            )
        };
        figs.push(Fig {
            job: Job::Effect(EffectByLayer {
                name: format!("iv_layers_{}_{tower}_{}", slug(&c), slug(&metric)),
                title: format!("Erasing {c} in the {tower} tower, layer by layer: {m}"),
                effect,
                effect_caption: format!("change in {m} of {c} (after − before)"),
                effect_label: format!("{m}: after − before"),
                probe_caption: format!("probe: {c} read from each {tower} layer"),
                probe_metric: first.map(|p| p.probe.metric()).unwrap_or("accuracy").to_string(),
                chance: first.map(ProbeRow::chance).unwrap_or(0.0),
                chance_label: first.map(chance_label).unwrap_or_default(),
                probe,
            }),
            section: kind_section(&c, "layers"),
            caption: format!(
                "Top: the change in {m} of <b>{c}</b> when its direction is erased at one layer of the {tower} tower \
                 (a point per layer, up to {n} held-out samples; bar: the 95% paired bootstrap interval of after − \
                 before; dotted: no effect). A point whose bar stays clear of zero is a layer where erasing changes \
                 the answers.{probe_text}",
                c = esc(&c),
                m = esc(&m)
            ),
        });
    }
    figs
}

/// Per edit, every measured concept's change, a panel per metric.
fn selectivity_figures(rows: &[&InterventionRow]) -> Vec<Fig> {
    let edits: Vec<&InterventionRow> = rows.iter().filter(|r| !is_steer(r) || r.alpha != 0.0).copied().collect();
    let mut figs = Vec::new();
    for (_, rs) in group(&edits, edit) {
        let r = rs[0];
        let panels: Vec<BarPanel> = group(&rs, |r| r.metric.clone())
            .into_iter()
            .map(|(metric, v)| BarPanel {
                title: metric_words(&metric),
                bars: v
                    .iter()
                    .map(|m| Bar {
                        label: m.measured_concept.clone(),
                        value: m.effect(),
                        ci_low: m.ci_low,
                        ci_high: m.ci_high,
                        highlight: m.measured_concept == m.concept,
                    })
                    .collect(),
            })
            .collect();
        let alpha = if is_steer(r) { format!("a{}", alpha_text(r.alpha)) } else { String::new() };
        let name = file_name(&format!("iv_selectivity_{}", r.method), r, &[&r.target, &alpha]);
        let c = esc(&r.concept);
        let reading = if is_steer(r) {
            format!(
                "A large change for {c} (its target rate toward {t} far above zero) with the grey bars near zero \
                 means the steering moves {c} alone.",
                t = esc(&r.target)
            )
        } else {
            format!(
                "A bar far below zero for {c} and near zero for the others means the erasure is selective: it \
                 removes {c} and leaves the rest alone."
            )
        };
        figs.push(Fig {
            job: Job::Bars(EffectBars {
                name,
                title: format!("{} at {}: change per measured concept", capital(&what(r, true)), place(r)),
                panels,
                y_label: "after − before".into(),
                highlight_label: format!("{} (intervened on)", r.concept),
            }),
            section: kind_section(&r.concept, "selectivity"),
            caption: format!(
                "What {} at {} does to every measured concept, one panel per metric: a bar is after − before on the \
                 held-out samples, its whisker the 95% paired bootstrap interval; vermillion: {c} itself. {reading}",
                esc(&what(r, true)),
                esc(&place(r))
            ),
        });
    }
    figs
}

/// `PREFIX_concept_direction_tower_site_layer_selector_positions`, then the
/// parts of `tail` that are not empty, made file-name safe.
fn file_name(prefix: &str, r: &InterventionRow, tail: &[&str]) -> String {
    let p = r.partition;
    let place = [
        &r.concept,
        &r.direction,
        p.tower.as_str(),
        p.site.as_str(),
        &p.layer.to_string(),
        p.selector.as_str(),
        &r.positions,
    ];
    let parts: Vec<&str> =
        std::iter::once(prefix).chain(place).chain(tail.iter().copied().filter(|t| !t.is_empty())).collect();
    slug(&parts.join("_"))
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// Per steering (everything but alpha), each measurement against alpha.
fn alpha_figures(rows: &[&InterventionRow]) -> Vec<Fig> {
    let steer: Vec<&InterventionRow> = rows.iter().filter(|r| is_steer(r)).copied().collect();
    let mut figs = Vec::new();
    for (_, rs) in group(&steer, |r| Edit { alpha: 0, ..edit(r) }) {
        let r = rs[0];
        let steered = format!("{} (steered)", r.concept);
        let label = |m: &InterventionRow| {
            if m.measured_concept == m.concept { steered.clone() } else { m.measured_concept.clone() }
        };
        let panels: Vec<CurvePanel> = {
            let mut by_metric = group(&rs, |r| r.metric.clone());
            by_metric.sort_by_key(|(m, _)| metric_rank(m));
            by_metric
                .into_iter()
                .map(|(metric, v)| {
                    let curves = group(&v, |m| m.measured_concept.clone())
                        .into_iter()
                        .map(|(_, mut pts)| {
                            pts.sort_by(|a, b| a.alpha.total_cmp(&b.alpha));
                            Curve {
                                label: label(pts[0]),
                                points: pts
                                    .iter()
                                    .map(|m| CurvePoint {
                                        layer: m.alpha,
                                        score: m.after,
                                        ci_low: Some(m.before + m.ci_low),
                                        ci_high: Some(m.before + m.ci_high),
                                        control: Some(m.before),
                                    })
                                    .collect(),
                            }
                        })
                        .collect();
                    CurvePanel {
                        title: metric_words(&metric),
                        y_label: format!("{} after steering", metric_words(&metric)),
                        y: is_rate(&metric).then_some((0.0, 1.02)),
                        curves,
                    }
                })
                .collect()
        };
        let c = esc(&r.concept);
        let headline = if rs.iter().any(|m| m.metric == "target_rate" && m.measured_concept == m.concept) {
            format!(
                "The headline is the target rate of {c} (wide vermillion line): the share of answers that name {t}; \
                 steering works when it climbs with α while the other lines stay on their dashed references.",
                t = esc(&r.target)
            )
        } else {
            format!(
                "Steering works when the wide vermillion line ({c}) moves with α while the others stay on their dashed references."
            )
        };
        figs.push(Fig {
            job: Job::Alpha(AlphaCurves {
                name: file_name("iv_alpha", r, &[&r.target]),
                title: format!("{} at {}: answers against α", capital(&what(r, false)), place(r)),
                panels,
                x_label: "α (steering strength, residual units)".into(),
                emphasis: Some(steered),
            }),
            section: kind_section(&r.concept, "alpha"),
            caption: format!(
                "What the model answers as the steering strength α grows ({} at {}), one panel per metric and one \
                 line per measured concept: solid, its value after steering (shaded: 95% interval); dashed in the \
                 same colour, its value before. {headline}",
                esc(&what(r, false)),
                esc(&place(r))
            ),
        });
    }
    figs
}

/// Every figure of the section.
pub(crate) fn figures(rows: &[InterventionRow], probes: &[ProbeRow]) -> Vec<Fig> {
    let mut sorted: Vec<&InterventionRow> = rows.iter().collect();
    sorted.sort_by(|a, b| order(a, b));
    let mut figs = layer_figures(&sorted, probes);
    figs.extend(selectivity_figures(&sorted));
    figs.extend(alpha_figures(&sorted));
    figs
}

fn concepts(rows: &[InterventionRow]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|r| r.concept.clone()).collect();
    v.sort();
    v.dedup();
    v
}

/// The table-of-contents entry.
pub(crate) fn nav(rows: &[InterventionRow]) -> String {
    let mut h = String::from("<li><a href=\"#interventions\">Interventions</a><ul>");
    for c in concepts(rows) {
        let _ = write!(h, "<li><a href=\"#{}\">{}</a></li>", section_id(&c), esc(&c));
    }
    h.push_str("<li><a href=\"#iv-table\">All intervention rows</a></li></ul></li>");
    h
}

/// The section: a subsection per intervened concept with its figures, then
/// every row in one table.
pub(crate) fn section<'f>(rows: &[InterventionRow], in_section: &dyn Fn(&str) -> Vec<Placed<'f>>) -> String {
    let mut h = String::from(
        "<h2 id=\"interventions\">Interventions</h2><p>Each intervention edits the residual stream at one layer \
         along a concept's direction, fit on part of the dataset, and measures the rest before and after: \
         <i>erase</i> removes the direction (difference of means or LEACE), <i>steer</i> adds α times it toward a \
         target class. Every measured concept is measured, not only the one edited, so an edit can be judged \
         selective. Intervals are 95% paired bootstrap intervals of after − before.</p>",
    );
    for c in concepts(rows) {
        let _ = write!(h, "<h3 id=\"{}\">{}</h3>", section_id(&c), esc(&c));
        for (kind, heading) in KINDS {
            let figs = in_section(&kind_section(&c, kind));
            if figs.is_empty() {
                continue;
            }
            let _ = write!(h, "<h4>{heading}</h4>");
            for (f, (png, svg)) in figs {
                figure_html(&mut h, png, svg, &f.caption);
            }
        }
    }
    h.push_str(&table(rows));
    h
}

/// Every row: concept, where, method, direction, target, alpha, metric,
/// measured concept, n, before, after, and the change with its interval.
fn table(rows: &[InterventionRow]) -> String {
    let mut sorted: Vec<&InterventionRow> = rows.iter().collect();
    sorted.sort_by(|a, b| order(a, b));
    let mut h = String::from(
        "<h3 id=\"iv-table\">All intervention rows</h3><p>One row per edit, metric and measured concept; the \
         intervened concept's own rows in bold.</p><table class=\"compact\"><tr><th>concept</th><th>where</th>\
         <th>method</th><th>direction</th><th>target</th><th>α</th><th>metric</th><th>measured concept</th>\
         <th>n</th><th>before</th><th>after</th><th>after − before [95% interval]</th></tr>",
    );
    for r in sorted {
        let own = r.measured_concept == r.concept;
        let (b, eb) = if own { ("<b>", "</b>") } else { ("", "") };
        let dash = |s: &str| if s.is_empty() { "–".to_string() } else { esc(s) };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td>\
             <td>{b}{}{eb}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{b}{} [{}, {}]{eb}</td></tr>",
            esc(&r.concept),
            esc(&place(r)),
            esc(&r.method),
            esc(&r.direction),
            dash(&r.target),
            if is_steer(r) { alpha_text(r.alpha) } else { "–".into() },
            esc(&metric_words(&r.metric)),
            esc(&r.measured_concept),
            r.n,
            fmt(Some(r.before)),
            fmt(Some(r.after)),
            fmt(Some(r.effect())),
            fmt(Some(r.ci_low)),
            fmt(Some(r.ci_high)),
        );
    }
    h.push_str("</table>");
    h
}
