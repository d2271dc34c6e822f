//! PNG plots of an adaptation run: training curves, the singular spectrum
//! before vs after, and a 2-D PCA map of the embeddings coloured by label.
//!
//! The plots must be drawable on a headless board with no system fonts and no
//! Python: `plotters` draws into an RGB buffer with a font compiled into the
//! binary (DejaVu Sans Mono, `runtime/assets/fonts`, permissive licence
//! beside it), and the `image` crate edgeclr already uses encodes the PNG,
//! which is written atomically. Every function takes plain data, so the CLI,
//! the demo and tests call it the same way.

use std::path::Path;
use std::sync::OnceLock;

use image::RgbImage;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// The font every label uses, registered once under [`FONT`].
static FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");
const FONT: &str = "sans-serif";

/// Default image size of every plot, in pixels.
pub const SIZE: (u32, u32) = (960, 640);

/// Why a plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("nothing to plot: {0}")]
    Empty(&'static str),
    #[error("{0} contains a non-finite value")]
    NonFinite(&'static str),
    #[error("{what}: {len} labels for {rows} points")]
    LabelCount {
        what: &'static str,
        len: usize,
        rows: usize,
    },
    #[error("drawing the plot: {0}")]
    Draw(String),
    #[error("the bundled font is invalid")]
    Font,
    #[error("encoding the PNG: {0}")]
    Encode(#[from] image::ImageError),
    #[error("writing {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn draw_err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
            && register_font(FONT, FontStyle::Bold, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// One epoch's diagnostics, as drawn by [`curves`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    pub loss: f64,
    pub alignment: Option<f64>,
    pub uniformity: f64,
    pub effective_rank: f64,
    /// k-NN accuracy in [0, 1], when labelled validation data exists.
    pub knn_acc: Option<f64>,
}

/// Draws into an RGB buffer of `size` and returns it as an image.
fn render(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), PlotError>,
) -> Result<RgbImage, PlotError> {
    ensure_font()?;
    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    RgbImage::from_raw(size.0, size.1, buf).ok_or(PlotError::Draw("buffer size".into()))
}

/// Padded range of finite values, never empty.
fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.08).max(1e-6 * lo.abs().max(1.0));
    (lo - pad)..(hi + pad)
}

/// One line chart in `area`.
fn line_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    points: &[(f64, f64)],
    color: RGBColor,
) -> Result<(), PlotError> {
    let xs = range(points.iter().map(|p| p.0));
    let ys = range(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(xs, ys)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(6)
        .y_labels(6)
        .label_style((FONT, 12))
        .draw()
        .map_err(draw_err)?;
    let finite: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    chart
        .draw_series(LineSeries::new(
            finite.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(draw_err)?;
    chart
        .draw_series(finite.iter().map(|&p| Circle::new(p, 3, color.filled())))
        .map_err(draw_err)?;
    Ok(())
}

/// Curves of loss, alignment, uniformity, effective rank (and k-NN accuracy
/// when present) per epoch, one panel each. Epoch 0 may hold the frozen
/// encoder's diagnostics (its loss is then NaN and left out).
pub fn curves(points: &[EpochPoint], size: (u32, u32)) -> Result<RgbImage, PlotError> {
    if points.is_empty() {
        return Err(PlotError::Empty("no epochs"));
    }
    let x = |p: &EpochPoint| p.epoch as f64;
    type Panel<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);
    let mut panels: Vec<Panel> = vec![
        (
            "loss",
            points.iter().map(|p| (x(p), p.loss)).collect(),
            BLUE,
        ),
        (
            "alignment (lower: positives closer)",
            points
                .iter()
                .filter_map(|p| p.alignment.map(|a| (x(p), a)))
                .collect(),
            RGBColor(0, 128, 0),
        ),
        (
            "uniformity (0 = collapse)",
            points.iter().map(|p| (x(p), p.uniformity)).collect(),
            RGBColor(200, 100, 0),
        ),
        (
            "effective rank (RankMe)",
            points.iter().map(|p| (x(p), p.effective_rank)).collect(),
            RED,
        ),
    ];
    if points.iter().any(|p| p.knn_acc.is_some()) {
        panels.push((
            "k-NN accuracy (%)",
            points
                .iter()
                .filter_map(|p| p.knn_acc.map(|a| (x(p), a * 100.0)))
                .collect(),
            MAGENTA,
        ));
    }
    render(size, |root| {
        let cells = root.split_evenly((2, 3));
        for ((title, pts, color), cell) in panels.iter().zip(cells.iter()) {
            line_panel(cell, title, pts, *color)?;
        }
        Ok(())
    })
}

/// The singular spectrum (descending singular values of the L2-normalised
/// embeddings) before and after adaptation on a log axis: dimensional
/// collapse shows as the tail dropping by orders of magnitude.
pub fn spectrum(before: &[f64], after: &[f64], size: (u32, u32)) -> Result<RgbImage, PlotError> {
    if before.is_empty() && after.is_empty() {
        return Err(PlotError::Empty("no singular values"));
    }
    const FLOOR: f64 = 1e-8;
    let clean = |s: &[f64]| -> Vec<(f64, f64)> {
        s.iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| ((i + 1) as f64, v.max(FLOOR)))
            .collect()
    };
    let (b, a) = (clean(before), clean(after));
    let all = || b.iter().chain(a.iter());
    let n = all().map(|p| p.0).fold(1.0, f64::max);
    let lo = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = all().map(|p| p.1).fold(FLOOR, f64::max);
    render(size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "singular spectrum of the embeddings (L2-normalised)",
                (FONT, 22),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..n + 1.0, (lo * 0.5..hi * 2.0).log_scale())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("index")
            .y_desc("singular value")
            .label_style((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        for (pts, color, name) in [
            (&b, RGBColor(120, 120, 120), "before (frozen)"),
            (&a, BLUE, "after (adapted)"),
        ] {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(draw_err)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        Ok(())
    })
}

/// The first two principal components of `x` (rows centred), by orthogonal
/// iteration on `XᵀX` — `O(n·d)` per iteration, no `d × d` matrix — so a
/// 60 000 × 1280 embedding set costs a few hundred ms, not an SVD.
pub fn pca_2d(x: ArrayView2<f32>) -> Result<Array2<f64>, PlotError> {
    let (n, d) = x.dim();
    if n < 2 || d < 2 {
        return Err(PlotError::Empty("PCA needs at least 2 rows and 2 columns"));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(PlotError::NonFinite("embeddings"));
    }
    let x = x.mapv(f64::from);
    let mean: Array1<f64> = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
    let xc = &x - &mean;
    // Deterministic start: two fixed, independent directions.
    let mut v = Array2::from_shape_fn((d, 2), |(i, j)| {
        (((i * 7 + j * 13 + 1) % 17) as f64 - 8.0) + if i == j { 10.0 } else { 0.0 }
    });
    for _ in 0..100 {
        let w = xc.t().dot(&xc.dot(&v));
        v = orthonormal_columns(w);
    }
    Ok(xc.dot(&v))
}

/// Gram–Schmidt on the two columns of `w`.
fn orthonormal_columns(mut w: Array2<f64>) -> Array2<f64> {
    let norm = |c: ndarray::ArrayView1<f64>| c.dot(&c).sqrt().max(1e-300);
    let n0 = norm(w.column(0));
    w.column_mut(0).mapv_inplace(|v| v / n0);
    let proj = w.column(0).dot(&w.column(1));
    let c0 = w.column(0).to_owned();
    w.column_mut(1).scaled_add(-proj, &c0);
    let n1 = norm(w.column(1));
    w.column_mut(1).mapv_inplace(|v| v / n1);
    w
}

/// A scatter plot of `points` (`[n, 2]`, e.g. from [`pca_2d`]) coloured by
/// `labels`, with `class_names` in the legend; one colour without labels.
pub fn scatter(
    points: ArrayView2<f64>,
    labels: Option<&[usize]>,
    class_names: &[String],
    title: &str,
    size: (u32, u32),
) -> Result<RgbImage, PlotError> {
    if points.nrows() == 0 || points.ncols() != 2 {
        return Err(PlotError::Empty("scatter needs [n, 2] points"));
    }
    if points.iter().any(|v| !v.is_finite()) {
        return Err(PlotError::NonFinite("points"));
    }
    if let Some(l) = labels {
        if l.len() != points.nrows() {
            return Err(PlotError::LabelCount {
                what: "scatter",
                len: l.len(),
                rows: points.nrows(),
            });
        }
    }
    let xs = range(points.column(0).iter().copied());
    let ys = range(points.column(1).iter().copied());
    let classes = labels.map_or(1, |l| l.iter().max().map_or(1, |m| m + 1));
    render(size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(xs, ys)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("PC 1")
            .y_desc("PC 2")
            .label_style((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        for class in 0..classes {
            let color = Palette99::pick(class).to_rgba();
            let rows = points
                .outer_iter()
                .enumerate()
                .filter(|(i, _)| labels.is_none_or(|l| l[*i] == class))
                .map(|(_, r)| (r[0], r[1]));
            let series = chart
                .draw_series(rows.map(|p| Circle::new(p, 2, color.filled())))
                .map_err(draw_err)?;
            if labels.is_some() {
                let name = class_names
                    .get(class)
                    .cloned()
                    .unwrap_or_else(|| class.to_string());
                series
                    .label(name)
                    .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
            }
        }
        if labels.is_some() {
            chart
                .configure_series_labels()
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(draw_err)?;
        }
        Ok(())
    })
}

/// Writes `image` as a PNG at `path`, atomically (see [`crate::atomic`]).
pub fn save_png(image: &RgbImage, path: &Path) -> Result<(), PlotError> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png)?;
    crate::atomic::write_atomic(path, |f| std::io::Write::write_all(f, bytes.get_ref())).map_err(
        |source| PlotError::Io {
            path: path.to_path_buf(),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(rank_end: f64) -> Vec<EpochPoint> {
        (0..5)
            .map(|e| EpochPoint {
                epoch: e,
                loss: if e == 0 {
                    f64::NAN
                } else {
                    5.0 - e as f64 * 0.3
                },
                alignment: Some(0.5 - e as f64 * 0.05),
                uniformity: -1.2 - e as f64 * 0.2,
                effective_rank: 240.0 + (rank_end - 240.0) * e as f64 / 4.0,
                knn_acc: Some(0.8 + e as f64 * 0.01),
            })
            .collect()
    }

    fn differing_pixels(a: &RgbImage, b: &RgbImage) -> usize {
        a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count()
    }

    fn non_white(a: &RgbImage) -> usize {
        a.pixels().filter(|p| p.0 != [255, 255, 255]).count()
    }

    #[test]
    fn curves_draw_the_data_and_only_the_data() {
        let a = curves(&epochs(300.0), SIZE).unwrap();
        let a2 = curves(&epochs(300.0), SIZE).unwrap();
        let b = curves(&epochs(100.0), SIZE).unwrap();
        assert_eq!(a.dimensions(), SIZE);
        assert_eq!(differing_pixels(&a, &a2), 0, "drawing is deterministic");
        assert!(
            differing_pixels(&a, &b) > 100,
            "different data, different pixels"
        );
        assert!(non_white(&a) > 5000, "text and lines are drawn");
    }

    #[test]
    fn spectrum_differs_where_the_spectra_differ() {
        let before: Vec<f64> = (1..200).map(|i| 10.0 / i as f64).collect();
        let flat: Vec<f64> = (1..200).map(|i| 10.0 / (i as f64).sqrt()).collect();
        let collapsed: Vec<f64> = (1..200).map(|i| if i < 5 { 10.0 } else { 1e-6 }).collect();
        let a = spectrum(&before, &flat, SIZE).unwrap();
        let b = spectrum(&before, &collapsed, SIZE).unwrap();
        assert!(differing_pixels(&a, &b) > 100);
        assert!(matches!(spectrum(&[], &[], SIZE), Err(PlotError::Empty(_))));
    }

    #[test]
    fn pca_finds_the_two_main_directions() {
        // Points spread 10× along column 3 and 3× along column 5.
        let n = 400;
        let x = Array2::from_shape_fn((n, 8), |(i, j)| {
            let t = i as f32 / n as f32 - 0.5;
            let s = ((i * 37) % 101) as f32 / 101.0 - 0.5;
            match j {
                3 => 10.0 * t,
                5 => 3.0 * s,
                _ => 0.01 * ((i * j) % 7) as f32,
            }
        });
        let p = pca_2d(x.view()).unwrap();
        let var = |c: usize| p.column(c).mapv(|v| v * v).sum() / n as f64;
        let (vx, vy) = (var(0), var(1));
        let true0 = x.column(3).mapv(|v| f64::from(v * v)).sum() / n as f64;
        assert!((vx - true0).abs() / true0 < 0.01, "{vx} vs {true0}");
        assert!(vy > 0.5 && vy < vx, "{vy}");
        assert!(pca_2d(Array2::<f32>::zeros((1, 4)).view()).is_err());
    }

    #[test]
    fn scatter_colours_by_label_and_checks_lengths() {
        let pts = Array2::from_shape_fn((60, 2), |(i, j)| ((i * (j + 3)) % 17) as f64);
        let labels: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let names = vec!["a".to_string(), "b".into(), "c".into()];
        let coloured = scatter(pts.view(), Some(&labels), &names, "t", SIZE).unwrap();
        let plain = scatter(pts.view(), None, &[], "t", SIZE).unwrap();
        assert!(differing_pixels(&coloured, &plain) > 50);
        assert!(matches!(
            scatter(pts.view(), Some(&labels[..5]), &names, "t", SIZE),
            Err(PlotError::LabelCount { .. })
        ));
    }

    #[test]
    fn saved_files_are_pngs_of_the_size() {
        let dir = std::env::temp_dir().join(format!("edgeclr-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("curves.png");
        save_png(&curves(&epochs(200.0), (640, 480)).unwrap(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let back = image::open(&path).unwrap();
        assert_eq!((back.width(), back.height()), (640, 480));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
