//! camera-classify: live top-k classification of camera frames on a small
//! screen, with the model's ImageNet head or a saved linear probe / k-NN head.
//!
//! ```text
//! camera-classify --source v4l2:/dev/video0 --display fb
//! camera-classify --source folder:data/photos --display png:/tmp/screens --frames 4
//! ```

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use edgeclr::Preprocessor;
use edgeclr_examples::cli::next_frame;
use edgeclr_examples::display::ScreenState;
use edgeclr_examples::{CommonArgs, FpsMeter, Head, Screen};

/// Live top-k classification of camera frames, drawn on a small screen.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// A linear probe saved by `edgeclr probe train` (instead of the model's logits).
    #[arg(long, value_name = "PROBE.json")]
    probe: Option<PathBuf>,
    /// A k-NN head saved by `edgeclr knn` or camera-enroll.
    #[arg(long, value_name = "HEAD.json")]
    knn: Option<PathBuf>,
    /// How many classes to list.
    #[arg(long, short = 'k', default_value_t = 4)]
    top: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let c = &args.common;
    let manifest = c.manifest()?;
    let head = Head::load(&manifest, args.probe.as_deref(), args.knn.as_deref())?;
    let mut encoder = c.load_encoder(&manifest, !head.needs_logits())?;
    let preprocessor = Preprocessor::new(&manifest);
    let mut source = c.open_source()?;
    let mut screen = Screen::open(c)?;
    let mut fps = FpsMeter::new();
    eprintln!(
        "camera-classify: {} with {} on {}",
        manifest.name,
        head.describe(),
        source.describe()
    );
    let mut n = 0u64;
    while !c.done(n) {
        let frame = next_frame(&mut *source, c.retry_secs)?;
        let top = head.classify(&mut *encoder, &preprocessor, &frame, args.top.max(1))?;
        let (label, conf) = top.first().map_or(("-", 0.0), |(l, p)| (l.as_str(), *p));
        println!("frame {n}: {label} {:.1}%", conf * 100.0);
        let state = ScreenState {
            title: "classify".into(),
            frame: Some(frame),
            fps: fps.tick(),
            status: head.describe(),
            top,
            ..ScreenState::default()
        };
        screen.show(&state)?;
        n += 1;
    }
    Ok(())
}
