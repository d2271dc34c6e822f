//! Deterministic synthetic frames, so every app runs (and is checked) in CI
//! with no camera and no data files.

use image::{Rgb, RgbImage};

use super::{FrameSource, SourceError};

/// A scene that moves a little every frame: a vertical colour gradient with a
/// bright square sliding across it. Frame `n` is always the same image.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    width: u32,
    height: u32,
    frame: u64,
}

impl SyntheticSource {
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width: width.max(8),
            height: height.max(8),
            frame: 0,
        }
    }

    /// Frame number `n`, without advancing the stream.
    pub fn frame(&self, n: u64) -> RgbImage {
        let (w, h) = (self.width, self.height);
        let side = (w.min(h) / 3).max(2);
        let travel = u64::from(w - side);
        let x0 = if travel == 0 {
            0
        } else {
            ((n * 8) % (2 * travel)) as u32
        };
        let x0 = if u64::from(x0) > travel {
            (2 * travel) as u32 - x0
        } else {
            x0
        };
        let y0 = (h - side) / 2;
        let shade = (n * 5 % 256) as u8;
        RgbImage::from_fn(w, h, |x, y| {
            if (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y) {
                Rgb([250, 220, 40])
            } else {
                let t = (y * 255 / (h - 1)) as u8;
                Rgb([t / 2, shade / 2 + t / 4, 255 - t])
            }
        })
    }
}

impl FrameSource for SyntheticSource {
    fn describe(&self) -> String {
        format!("synthetic {}x{}", self.width, self.height)
    }

    fn next_frame(&mut self) -> Result<RgbImage, SourceError> {
        let frame = self.frame(self.frame);
        self.frame += 1;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_deterministic_and_move() {
        let mut a = SyntheticSource::new(64, 48);
        let mut b = SyntheticSource::new(64, 48);
        let (a0, b0) = (a.next_frame().unwrap(), b.next_frame().unwrap());
        assert_eq!(a0, b0);
        let a1 = a.next_frame().unwrap();
        assert_ne!(a0, a1, "consecutive frames differ");
        assert_eq!(a0.dimensions(), (64, 48));
        // The square starts at the left edge, mid-height.
        assert_eq!(a0.get_pixel(2, 24).0, [250, 220, 40]);
        assert_ne!(a0.get_pixel(60, 24).0, [250, 220, 40]);
    }
}
