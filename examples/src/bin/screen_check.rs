//! screen-check: does a saved app screen (PNG) show the expected top label?
//!
//! The label box is re-drawn with the expected text over a copy of the screen
//! and compared pixel for pixel, so this checks the rendered text itself, not
//! a side file. Exit status 0 when every PNG matches. Used by ci/check_examples.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use edgeclr_examples::display::{label_matches, Layout, RgbCanvas};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Check that saved app screens show the expected top label"
)]
struct Args {
    /// The layout the screens were drawn in.
    #[arg(long, default_value = "color320x240")]
    layout: Layout,
    /// The label every screen must show.
    #[arg(long)]
    label: String,
    #[arg(required = true, value_name = "SCREEN.png")]
    screens: Vec<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let size = args.layout.size();
    let mut bad = 0;
    for path in &args.screens {
        let image = image::open(path)
            .with_context(|| format!("reading {}", path.display()))?
            .to_rgb8();
        if image.dimensions() != (size.width, size.height) {
            bail!(
                "{} is {}x{}, not a {:?} screen",
                path.display(),
                image.width(),
                image.height(),
                args.layout
            );
        }
        if label_matches(&RgbCanvas { image }, args.layout, &args.label) {
            println!("{}: shows '{}'", path.display(), args.label);
        } else {
            println!("{}: does NOT show '{}'", path.display(), args.label);
            bad += 1;
        }
    }
    if bad > 0 {
        bail!(
            "{bad} of {} screens do not show '{}'",
            args.screens.len(),
            args.label
        );
    }
    Ok(())
}
