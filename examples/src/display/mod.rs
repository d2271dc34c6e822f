//! The camera apps' screen, drawn with `embedded-graphics` on any
//! [`DrawTarget`]: the same code fills a PNG ([`RgbCanvas`] + [`PngSink`]),
//! the Linux framebuffer ([`FramebufferSink`]), or a panel on a board.
//!
//! On a board with an SPI/I²C panel, pass the driver's display to
//! [`draw_screen`]: an ST7789 (`mipidsi` crate) is an `Rgb565` target and an
//! SSD1306 (`ssd1306` crate) a `BinaryColor` one, so wrap them as
//! `display.color_converted::<Rgb888>()`. The [`Layout::Mono128x64`] layout
//! only uses black and white (the camera frame is dithered), so it converts to
//! an SSD1306 exactly. The driver crates need the board's HAL, so they are not
//! dependencies here.
//!
//! What is on screen: the camera frame scaled into its panel, the top label
//! with its confidence bar, the top-k list, FPS, a status line (enrolment
//! state), and during adaptation the step, loss, uniformity and effective rank.

mod canvas;
mod sink;

use std::path::PathBuf;
use std::str::FromStr;

use embedded_graphics::mono_font::ascii::{FONT_10X20, FONT_4X6, FONT_5X8, FONT_6X10};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Polyline, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use image::RgbImage;

pub use canvas::RgbCanvas;
pub use sink::{DisplaySink, DisplaySpec, FbFormat, FramebufferSink, NullSink, PngSink};

/// Errors raised by display sinks.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("unknown display '{0}' (expected png:DIR, fb, fb:/dev/fbN or none)")]
    BadSpec(String),
    #[error("unknown layout '{0}' (expected mono128x64 or color320x240)")]
    BadLayout(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot save {path}: {message}")]
    Png { path: PathBuf, message: String },
    #[error("framebuffer {device}: {message}")]
    Framebuffer { device: PathBuf, message: String },
}

/// Panel sizes the screen is laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// 128×64 monochrome (SSD1306 and the like): small frame, top-1, one
    /// line of status or adaptation readout.
    Mono128x64,
    /// 320×240 colour (ST7789, ILI9341, a framebuffer corner).
    #[default]
    Color320x240,
}

impl FromStr for Layout {
    type Err = DisplayError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mono128x64" | "mono" => Ok(Layout::Mono128x64),
            "color320x240" | "color" => Ok(Layout::Color320x240),
            _ => Err(DisplayError::BadLayout(s.to_owned())),
        }
    }
}

/// Where each element sits in a layout.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub size: Size,
    pub frame: Rectangle,
    /// The top label's text box (cleared, then the label drawn at its top-left).
    pub label: Rectangle,
    pub label_font: &'static MonoFont<'static>,
    /// The confidence bar's outline; its fill is proportional to confidence.
    pub bar: Rectangle,
    pub small_font: &'static MonoFont<'static>,
    /// Right-hand (colour) or bottom (mono) text area.
    pub info: Rectangle,
    pub topk: Rectangle,
    pub mono: bool,
}

impl Layout {
    pub fn geometry(self) -> Geometry {
        match self {
            Layout::Color320x240 => Geometry {
                size: Size::new(320, 240),
                frame: Rectangle::new(Point::new(0, 0), Size::new(192, 144)),
                label: Rectangle::new(Point::new(4, 148), Size::new(312, 20)),
                label_font: &FONT_10X20,
                bar: Rectangle::new(Point::new(4, 170), Size::new(250, 10)),
                small_font: &FONT_6X10,
                info: Rectangle::new(Point::new(196, 2), Size::new(122, 140)),
                topk: Rectangle::new(Point::new(4, 184), Size::new(312, 54)),
                mono: false,
            },
            Layout::Mono128x64 => Geometry {
                size: Size::new(128, 64),
                frame: Rectangle::new(Point::new(0, 0), Size::new(48, 36)),
                label: Rectangle::new(Point::new(50, 0), Size::new(78, 10)),
                label_font: &FONT_6X10,
                bar: Rectangle::new(Point::new(50, 11), Size::new(54, 6)),
                small_font: &FONT_5X8,
                info: Rectangle::new(Point::new(50, 19), Size::new(78, 17)),
                topk: Rectangle::new(Point::new(0, 38), Size::new(128, 26)),
                mono: true,
            },
        }
    }

    pub fn size(self) -> Size {
        self.geometry().size
    }
}

/// Live adaptation diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AdaptReadout {
    pub step: u64,
    pub loss: f64,
    /// log E exp(−t‖x−y‖²), lower is more uniform.
    pub uniformity: Option<f64>,
    /// RankMe effective rank of recent embeddings.
    pub effective_rank: Option<f64>,
    /// Checkpoints written so far.
    pub checkpoints: u64,
}

/// Everything one screen shows.
#[derive(Debug, Clone, Default)]
pub struct ScreenState {
    /// App name, shown at the top of the info area (`classify`).
    pub title: String,
    pub frame: Option<RgbImage>,
    /// Ranked `(label, confidence in [0, 1])`; the first is the top label.
    pub top: Vec<(String, f32)>,
    pub fps: f32,
    /// State text: enrolment (`cat(5) mug(3)`), or a message. Lines split at
    /// `\n` and wrap between words; the mono layout shows the first line only.
    pub status: String,
    pub adapt: Option<AdaptReadout>,
    /// Recent losses, oldest first, drawn as a small chart (colour layout).
    pub loss_history: Vec<f32>,
}

const BLACK: Rgb888 = Rgb888::BLACK;
const WHITE: Rgb888 = Rgb888::WHITE;
const GREY: Rgb888 = Rgb888::new(150, 150, 150);
const BAR: Rgb888 = Rgb888::new(40, 200, 90);
const ACCENT: Rgb888 = Rgb888::new(255, 200, 40);
const BACKGROUND: Rgb888 = Rgb888::new(16, 20, 28);

fn background(g: &Geometry) -> Rgb888 {
    if g.mono {
        BLACK
    } else {
        BACKGROUND
    }
}

/// Splits `s` into lines of at most `width` pixels of `font`: at newlines,
/// then between words (a word longer than a line is truncated).
fn wrap(s: &str, font: &MonoFont, width: u32) -> Vec<String> {
    let per = font.character_size.width + font.character_spacing;
    let n = (width / per.max(1)).max(1) as usize;
    let mut lines = Vec::new();
    for para in s.lines() {
        let mut line = String::new();
        for word in para.split_whitespace() {
            let len = line.chars().count();
            if len > 0 && len + 1 + word.chars().count() > n {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(fit(&line, font, width));
    }
    lines
}

/// Truncates `s` to what fits in `width` pixels of `font`.
fn fit(s: &str, font: &MonoFont, width: u32) -> String {
    let per = font.character_size.width + font.character_spacing;
    let n = (width / per.max(1)) as usize;
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

fn text<D: DrawTarget<Color = Rgb888>>(
    target: &mut D,
    s: &str,
    at: Point,
    font: &MonoFont,
    color: Rgb888,
) -> Result<(), D::Error> {
    Text::with_baseline(s, at, MonoTextStyle::new(font, color), Baseline::Top).draw(target)?;
    Ok(())
}

/// The frame scaled to fit `area` (aspect kept, centred). Mono layouts get an
/// ordered (Bayer 4×4) dither to black and white.
fn draw_frame<D: DrawTarget<Color = Rgb888>>(
    target: &mut D,
    frame: &RgbImage,
    area: Rectangle,
    mono: bool,
) -> Result<(), D::Error> {
    let (fw, fh) = frame.dimensions();
    if fw == 0 || fh == 0 {
        return Ok(());
    }
    let (aw, ah) = (area.size.width, area.size.height);
    let scale = f64::min(aw as f64 / fw as f64, ah as f64 / fh as f64);
    let w = ((fw as f64 * scale).round() as u32).clamp(1, aw);
    let h = ((fh as f64 * scale).round() as u32).clamp(1, ah);
    let small = image::imageops::resize(frame, w, h, image::imageops::FilterType::Triangle);
    const BAYER: [[u16; 4]; 4] = [[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]];
    let colors = small.enumerate_pixels().map(|(x, y, p)| {
        let [r, g, b] = p.0;
        if mono {
            let luma = (u16::from(r) * 77 + u16::from(g) * 150 + u16::from(b) * 29) >> 8;
            let threshold = BAYER[(y % 4) as usize][(x % 4) as usize] * 16 + 8;
            if luma > threshold {
                WHITE
            } else {
                BLACK
            }
        } else {
            Rgb888::new(r, g, b)
        }
    });
    let origin = area.top_left + Point::new(((aw - w) / 2) as i32, ((ah - h) / 2) as i32);
    target.fill_contiguous(&Rectangle::new(origin, Size::new(w, h)), colors)
}

/// A horizontal bar: outline, and a fill `value` ∈ [0, 1] of the inner width.
fn draw_bar<D: DrawTarget<Color = Rgb888>>(
    target: &mut D,
    area: Rectangle,
    value: f32,
    color: Rgb888,
) -> Result<(), D::Error> {
    let outline = if color == WHITE { WHITE } else { GREY };
    area.into_styled(PrimitiveStyle::with_stroke(outline, 1))
        .draw(target)?;
    let inner = area.size.width.saturating_sub(2);
    let filled = (inner as f32 * value.clamp(0.0, 1.0)).round() as u32;
    if filled > 0 {
        Rectangle::new(
            area.top_left + Point::new(1, 1),
            Size::new(filled, area.size.height.saturating_sub(2)),
        )
        .into_styled(PrimitiveStyle::with_fill(color))
        .draw(target)?;
    }
    Ok(())
}

/// Draws only the top label's box (cleared to the background first). Used by
/// [`draw_screen`], and by checks that compare a saved screen's label region
/// with the expected text.
pub fn draw_label<D: DrawTarget<Color = Rgb888>>(
    target: &mut D,
    layout: Layout,
    label: &str,
) -> Result<(), D::Error> {
    let g = layout.geometry();
    g.label
        .into_styled(PrimitiveStyle::with_fill(background(&g)))
        .draw(target)?;
    let color = if g.mono { WHITE } else { ACCENT };
    text(
        target,
        &fit(label, g.label_font, g.label.size.width),
        g.label.top_left,
        g.label_font,
        color,
    )
}

/// A small line chart of `values` (auto-scaled) inside `area`.
fn draw_chart<D: DrawTarget<Color = Rgb888>>(
    target: &mut D,
    values: &[f32],
    area: Rectangle,
) -> Result<(), D::Error> {
    area.into_styled(PrimitiveStyle::with_stroke(GREY, 1))
        .draw(target)?;
    let finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.len() < 2 {
        return Ok(());
    }
    let lo = finite.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = (hi - lo).max(1e-6);
    let (w, h) = (area.size.width as i32 - 2, area.size.height as i32 - 2);
    let n = finite.len() as i32;
    let points: Vec<Point> = finite
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = area.top_left.x + 1 + (i as i32 * (w - 1)) / (n - 1).max(1);
            let y = area.top_left.y + 1 + ((hi - v) / span * (h - 1) as f32).round() as i32;
            Point::new(x, y)
        })
        .collect();
    Polyline::new(&points)
        .into_styled(PrimitiveStyle::with_stroke(ACCENT, 1))
        .draw(target)
}

/// Draws the whole screen for `state` in `layout` on `target` (top-left
/// aligned; a larger target keeps its other pixels).
pub fn draw_screen<D: DrawTarget<Color = Rgb888>>(
    target: &mut D,
    layout: Layout,
    state: &ScreenState,
) -> Result<(), D::Error> {
    let g = layout.geometry();
    let bg = background(&g);
    let fg = WHITE;
    Rectangle::new(Point::zero(), g.size)
        .into_styled(PrimitiveStyle::with_fill(bg))
        .draw(target)?;
    if let Some(frame) = &state.frame {
        draw_frame(target, frame, g.frame, g.mono)?;
    }
    let (label, confidence) = state
        .top
        .first()
        .map_or(("-", 0.0), |(l, c)| (l.as_str(), *c));
    draw_label(target, layout, label)?;
    let bar_color = if g.mono { WHITE } else { BAR };
    draw_bar(target, g.bar, confidence, bar_color)?;
    let pct = format!("{:.0}%", confidence * 100.0);
    let pct_at =
        g.bar.top_left + Point::new(g.bar.size.width as i32 + 3, if g.mono { -1 } else { 0 });
    text(
        target,
        &pct,
        pct_at,
        if g.mono { &FONT_4X6 } else { g.small_font },
        fg,
    )?;

    let small = g.small_font;
    let line = (small.character_size.height + 1) as i32;
    let width = g.info.size.width;
    let mut info_lines: Vec<String> = Vec::new();
    if g.mono {
        info_lines.push(format!("{:.1} fps", state.fps));
        if let Some(a) = &state.adapt {
            info_lines.push(format!("L{:.2} s{}", a.loss, a.step));
        } else if let Some(first) = state.status.lines().next() {
            info_lines.push(first.to_owned());
        }
    } else {
        info_lines.push(state.title.clone());
        info_lines.push(format!("{:.1} fps", state.fps));
        info_lines.extend(wrap(&state.status, small, width));
        if let Some(a) = &state.adapt {
            info_lines.push(format!("step {}", a.step));
            info_lines.push(format!("loss {:.4}", a.loss));
            if let Some(u) = a.uniformity {
                info_lines.push(format!("unif {u:.3}"));
            }
            if let Some(r) = a.effective_rank {
                info_lines.push(format!("erank {r:.1}"));
            }
            info_lines.push(format!("ckpt {}", a.checkpoints));
        }
    }
    let max_lines = (g.info.size.height as i32 / line).max(0) as usize;
    for (i, l) in info_lines.iter().take(max_lines).enumerate() {
        let color = if i == 0 && !g.mono { ACCENT } else { fg };
        text(
            target,
            &fit(l, small, width),
            g.info.top_left + Point::new(0, i as i32 * line),
            small,
            color,
        )?;
    }
    if !g.mono && state.adapt.is_some() {
        let used = info_lines.len().min(max_lines) as i32 * line + 2;
        let chart_h = g.info.size.height as i32 - used;
        if chart_h >= 12 {
            draw_chart(
                target,
                &state.loss_history,
                Rectangle::new(
                    g.info.top_left + Point::new(0, used),
                    Size::new(g.info.size.width - 2, chart_h as u32),
                ),
            )?;
        }
    }

    // Top-k list (ranks 2.. in mono, where top-1 is already the label;
    // mono also shows the adaptation readout there).
    let mut rows: Vec<(String, Option<f32>)> = Vec::new();
    if g.mono {
        if let Some(a) = &state.adapt {
            let u = a.uniformity.map_or("-".into(), |u| format!("{u:.2}"));
            let r = a.effective_rank.map_or("-".into(), |r| format!("{r:.0}"));
            rows.push((format!("unif {u} rank {r}"), None));
        }
        for (l, c) in state.top.iter().skip(1) {
            rows.push((l.clone(), Some(*c)));
        }
    } else {
        for (l, c) in state.top.iter() {
            rows.push((l.clone(), Some(*c)));
        }
    }
    let (font, row_h) = if g.mono {
        (&FONT_5X8, 9)
    } else {
        (&FONT_6X10, 11)
    };
    let bar_w = if g.mono { 30 } else { 80 };
    let max_rows = (g.topk.size.height as i32 / row_h) as usize;
    for (i, (l, c)) in rows.iter().take(max_rows).enumerate() {
        let y = g.topk.top_left.y + i as i32 * row_h;
        let x = g.topk.top_left.x;
        match c {
            Some(c) => {
                draw_bar(
                    target,
                    Rectangle::new(Point::new(x, y + 1), Size::new(bar_w, (row_h - 3) as u32)),
                    *c,
                    bar_color,
                )?;
                let s = format!("{:>3.0}% {l}", c * 100.0);
                let avail = g.topk.size.width - bar_w - 4;
                text(
                    target,
                    &fit(&s, font, avail),
                    Point::new(x + bar_w as i32 + 4, y),
                    font,
                    fg,
                )?;
            }
            None => text(
                target,
                &fit(l, font, g.topk.size.width),
                Point::new(x, y),
                font,
                fg,
            )?,
        }
    }
    Ok(())
}

/// Renders `state` into a new canvas of the layout's size.
pub fn render(layout: Layout, state: &ScreenState) -> RgbCanvas {
    let size = layout.size();
    let mut canvas = RgbCanvas::new(size.width, size.height);
    // RgbCanvas's error type is Infallible.
    let Ok(()) = draw_screen(&mut canvas, layout, state);
    canvas
}

/// Whether the top-label box of `screen` (a saved screen of `layout`) shows
/// exactly `label`: the box is re-drawn with `label` on a copy and compared
/// pixel for pixel. This is how CI reads the label back from a PNG.
pub fn label_matches(screen: &RgbCanvas, layout: Layout, label: &str) -> bool {
    let mut expected = screen.clone();
    let Ok(()) = draw_label(&mut expected, layout, label);
    expected == *screen
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn state() -> ScreenState {
        ScreenState {
            title: "classify".into(),
            frame: Some(RgbImage::from_pixel(64, 48, Rgb([200, 40, 40]))),
            top: vec![
                ("espresso".into(), 0.5),
                ("cup".into(), 0.25),
                ("eggnog".into(), 0.1),
            ],
            fps: 12.5,
            status: "3 classes".into(),
            adapt: None,
            loss_history: Vec::new(),
        }
    }

    fn count(canvas: &RgbCanvas, area: Rectangle, color: [u8; 3]) -> usize {
        area.points()
            .filter(|p| canvas.pixel(p.x as u32, p.y as u32) == Some(color))
            .count()
    }

    #[test]
    fn colour_layout_places_frame_bar_and_label() {
        let c = render(Layout::Color320x240, &state());
        assert_eq!(c.image.dimensions(), (320, 240));
        let g = Layout::Color320x240.geometry();
        // 64x48 scales to 192x144: the whole frame panel is the frame colour.
        assert_eq!(c.pixel(0, 0), Some([200, 40, 40]));
        assert_eq!(c.pixel(191, 143), Some([200, 40, 40]));
        // Confidence 0.5: the bar's inner width (248) is filled to 124 pixels.
        let y = (g.bar.top_left.y + 5) as u32;
        let x0 = (g.bar.top_left.x + 1) as u32;
        assert_eq!(c.pixel(x0, y), Some([40, 200, 90]));
        assert_eq!(c.pixel(x0 + 123, y), Some([40, 200, 90]));
        assert_eq!(c.pixel(x0 + 124, y), Some([16, 20, 28]));
        // The label is drawn in the accent colour, and reads back as itself only.
        assert!(count(&c, g.label, [255, 200, 40]) > 50);
        assert!(label_matches(&c, Layout::Color320x240, "espresso"));
        assert!(!label_matches(&c, Layout::Color320x240, "espressO"));
        assert!(!label_matches(&c, Layout::Color320x240, "cup"));
        // Three top-k rows with bars.
        let row = |i: i32| Point::new(g.topk.top_left.x + 2, g.topk.top_left.y + i * 11 + 4);
        for i in 0..3 {
            let p = row(i);
            assert_eq!(
                c.pixel(p.x as u32, p.y as u32),
                Some([40, 200, 90]),
                "row {i}"
            );
        }
        let p = row(3);
        assert_eq!(c.pixel(p.x as u32, p.y as u32), Some([16, 20, 28]));
    }

    #[test]
    fn mono_layout_is_black_and_white_only() {
        let mut s = state();
        s.frame = Some(RgbImage::from_fn(40, 30, |x, _| {
            Rgb([(x * 6) as u8, (x * 6) as u8, (x * 6) as u8])
        }));
        s.adapt = Some(AdaptReadout {
            step: 7,
            loss: 3.21,
            uniformity: Some(-2.5),
            effective_rank: Some(40.0),
            checkpoints: 1,
        });
        let c = render(Layout::Mono128x64, &s);
        assert_eq!(c.image.dimensions(), (128, 64));
        assert!(c
            .image
            .pixels()
            .all(|p| p.0 == [0, 0, 0] || p.0 == [255, 255, 255]));
        let g = Layout::Mono128x64.geometry();
        // The dithered gradient: dark on the left of the frame, light on the right.
        let left = count(
            &c,
            Rectangle::new(Point::new(0, 0), Size::new(12, 36)),
            [255; 3],
        );
        let right = count(
            &c,
            Rectangle::new(Point::new(36, 0), Size::new(12, 36)),
            [255; 3],
        );
        assert!(left < right, "{left} vs {right}");
        assert!(label_matches(&c, Layout::Mono128x64, "espresso"));
        // Bar half full: inner width 52 → 26 pixels lit.
        let y = (g.bar.top_left.y + 3) as u32;
        assert_eq!(c.pixel(51, y), Some([255; 3]));
        assert_eq!(c.pixel(51 + 25, y), Some([255; 3]));
        assert_eq!(c.pixel(51 + 26, y), Some([0; 3]));
        // The adaptation readout is on screen.
        assert!(count(&c, g.topk, [255; 3]) > 20);
    }

    #[test]
    fn adaptation_readout_and_chart_render() {
        let mut s = state();
        s.adapt = Some(AdaptReadout {
            step: 12,
            loss: 4.5,
            uniformity: Some(-3.1),
            effective_rank: Some(50.2),
            checkpoints: 2,
        });
        s.loss_history = (0..20).map(|i| 5.0 - i as f32 * 0.1).collect();
        let c = render(Layout::Color320x240, &s);
        let g = Layout::Color320x240.geometry();
        // The chart's falling line: accent pixels in the lower-right of the info area.
        let chart = Rectangle::new(
            g.info.top_left + Point::new(0, 90),
            Size::new(g.info.size.width, 50),
        );
        assert!(count(&c, chart, [255, 200, 40]) >= 40, "a connected line");
        let without = render(Layout::Color320x240, &state());
        assert_ne!(c, without);
    }

    #[test]
    fn status_wraps_between_words() {
        let lines = wrap("saved\nastronaut(1) cat(1) coffee(1)", &FONT_6X10, 6 * 20);
        assert_eq!(lines, ["saved", "astronaut(1) cat(1)", "coffee(1)"]);
        let long = wrap("abcdefghijklmnopqrstuvwxyz", &FONT_6X10, 60);
        assert_eq!(long, ["abcdefghi~"]);
    }

    #[test]
    fn long_labels_are_truncated_to_the_box() {
        let long = "a very long label that cannot possibly fit in the box";
        let f = fit(long, &FONT_10X20, 312);
        assert_eq!(f.chars().count(), 31);
        assert!(f.ends_with('~'));
        assert_eq!(fit("cat", &FONT_10X20, 312), "cat");
        let mut s = state();
        s.top = vec![(long.into(), 1.5)];
        let c = render(Layout::Mono128x64, &s);
        assert!(label_matches(&c, Layout::Mono128x64, long));
    }
}
