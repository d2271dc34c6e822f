//! An in-memory RGB image that embedded-graphics can draw on: what the PNG
//! and framebuffer sinks show, and what tests inspect pixel by pixel.

use std::convert::Infallible;

use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use image::{Rgb, RgbImage};

/// A `DrawTarget` backed by an [`RgbImage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbCanvas {
    pub image: RgbImage,
}

impl RgbCanvas {
    /// A black canvas.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            image: RgbImage::new(width, height),
        }
    }

    /// The pixel at `(x, y)` as `[r, g, b]` (`None` outside the canvas).
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        (x < self.image.width() && y < self.image.height()).then(|| self.image.get_pixel(x, y).0)
    }
}

impl OriginDimensions for RgbCanvas {
    fn size(&self) -> Size {
        Size::new(self.image.width(), self.image.height())
    }
}

impl DrawTarget for RgbCanvas {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        let (w, h) = (self.image.width() as i32, self.image.height() as i32);
        for Pixel(p, c) in pixels {
            if (0..w).contains(&p.x) && (0..h).contains(&p.y) {
                self.image
                    .put_pixel(p.x as u32, p.y as u32, Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}
