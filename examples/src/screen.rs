//! The screen of an app: the sink chosen by `--display`, the layout, FPS.

use std::time::Instant;

use crate::display::{render, DisplaySink, Layout, ScreenState};
use anyhow::{Context, Result};

use crate::CommonArgs;

/// Renders states in one layout and shows them on one sink.
pub struct Screen {
    layout: Layout,
    sink: Box<dyn DisplaySink>,
}

impl Screen {
    pub fn open(args: &CommonArgs) -> Result<Self> {
        let sink = args
            .display
            .open()
            .with_context(|| format!("opening the display {:?}", args.display))?;
        Ok(Self {
            layout: args.layout,
            sink,
        })
    }

    pub fn show(&mut self, state: &ScreenState) -> Result<()> {
        let canvas = render(self.layout, state);
        self.sink.show(&canvas).context("showing a frame")
    }
}

/// Frames per second, smoothed over the last frames.
#[derive(Debug)]
pub struct FpsMeter {
    last: Option<Instant>,
    fps: f32,
}

impl Default for FpsMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl FpsMeter {
    pub fn new() -> Self {
        Self {
            last: None,
            fps: 0.0,
        }
    }

    /// Records a finished frame; returns the smoothed rate.
    pub fn tick(&mut self) -> f32 {
        let now = Instant::now();
        if let Some(last) = self.last {
            let inst = 1.0 / now.duration_since(last).as_secs_f32().max(1e-6);
            self.fps = if self.fps == 0.0 {
                inst
            } else {
                0.8 * self.fps + 0.2 * inst
            };
        }
        self.last = Some(now);
        self.fps
    }
}
