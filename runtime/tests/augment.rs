//! Seeded SimCLR-style augmentation: determinism, resumption and each op.

use std::path::PathBuf;

use edgeclr::augment::{AugmentConfig, AugmentError, Augmenter};
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

fn chelsea() -> RgbImage {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/photos/chelsea.png");
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// A small synthetic image with distinct, asymmetric pixels.
fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 7 % 256) as u8,
            (y * 13 % 256) as u8,
            ((x * y) % 256) as u8,
        ])
    })
}

/// Only crop + resize, with the full image as the crop (aspect ratio pinned
/// to the image's so RandomResizedCrop's first try is the whole image).
fn identity_for(img: &RgbImage, out: (u32, u32)) -> AugmentConfig {
    let r = img.width() as f32 / img.height() as f32;
    AugmentConfig {
        ratio: (r, r),
        ..AugmentConfig::identity(out)
    }
}

#[test]
fn default_config_is_simclr_and_valid() {
    let c = AugmentConfig::default();
    assert_eq!(c.out_size, (224, 224));
    assert_eq!(c.scale, (0.2, 1.0));
    assert_eq!(c.ratio, (0.75, 4.0 / 3.0));
    assert_eq!(
        (c.hflip_p, c.jitter_p, c.grayscale_p, c.blur_p),
        (0.5, 0.8, 0.2, 0.5)
    );
    assert_eq!(
        (c.brightness, c.contrast, c.saturation, c.hue),
        (0.4, 0.4, 0.4, 0.1)
    );
    assert_eq!(c.blur_sigma, (0.1, 2.0));
    c.validate().unwrap();
}

#[test]
fn config_serde_round_trip() {
    let c = AugmentConfig {
        out_size: (96, 64),
        ..AugmentConfig::default()
    };
    let json = serde_json::to_string(&c).unwrap();
    let back: AugmentConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
    // Missing fields take the defaults.
    let partial: AugmentConfig = serde_json::from_str(r#"{"out_size":[32,32]}"#).unwrap();
    assert_eq!(partial.out_size, (32, 32));
    assert_eq!(partial.scale, (0.2, 1.0));
}

#[test]
fn same_seed_same_views() {
    let img = chelsea();
    let cfg = AugmentConfig {
        out_size: (96, 96),
        ..AugmentConfig::default()
    };
    let mut a = Augmenter::new(cfg.clone(), 7).unwrap();
    let mut b = Augmenter::new(cfg, 7).unwrap();
    let va = a.views(&img, 6);
    let vb = b.views(&img, 6);
    assert_eq!(va.len(), 6);
    assert_eq!(va, vb);
    assert_eq!(a.rng_state(), b.rng_state());
    // Successive views differ from each other.
    assert_ne!(va[0], va[1]);
}

#[test]
fn different_seeds_differ() {
    let img = chelsea();
    let cfg = AugmentConfig {
        out_size: (96, 96),
        ..AugmentConfig::default()
    };
    let va = Augmenter::new(cfg.clone(), 1).unwrap().views(&img, 4);
    let vb = Augmenter::new(cfg, 2).unwrap().views(&img, 4);
    assert_ne!(va, vb);
}

#[test]
fn output_size_is_out_size() {
    let img = chelsea();
    for out in [(224, 224), (160, 96), (33, 71)] {
        let mut aug = Augmenter::new(
            AugmentConfig {
                out_size: out,
                ..AugmentConfig::default()
            },
            3,
        )
        .unwrap();
        for v in aug.views(&img, 8) {
            assert_eq!(v.dimensions(), out);
        }
    }
    // Tiny and empty inputs do not panic.
    let mut aug = Augmenter::new(AugmentConfig::default(), 3).unwrap();
    assert_eq!(aug.view(&gradient(1, 1)).dimensions(), (224, 224));
    assert_eq!(aug.view(&gradient(3, 50)).dimensions(), (224, 224));
    assert_eq!(aug.view(&RgbImage::new(0, 0)).dimensions(), (224, 224));
}

#[test]
fn identity_config_is_plain_resize() {
    let img = chelsea();
    let out = (128, 96);
    let mut aug = Augmenter::new(identity_for(&img, out), 11).unwrap();
    let expected = imageops::resize(&img, out.0, out.1, FilterType::Triangle);
    for _ in 0..5 {
        assert_eq!(aug.sample_crop(img.width(), img.height()), (0, 0, 451, 300));
        assert_eq!(aug.view(&img), expected);
    }
}

#[test]
fn flip_only_mirrors() {
    let img = chelsea();
    let out = (120, 80);
    let cfg = AugmentConfig {
        hflip_p: 1.0,
        ..identity_for(&img, out)
    };
    let mut aug = Augmenter::new(cfg, 5).unwrap();
    let resized = imageops::resize(&img, out.0, out.1, FilterType::Triangle);
    let expected = imageops::flip_horizontal(&resized);
    let v = aug.view(&img);
    assert_eq!(v, expected);
    assert_ne!(v, resized);
    for (x, y, p) in v.enumerate_pixels() {
        assert_eq!(*p, *resized.get_pixel(out.0 - 1 - x, y));
    }
}

#[test]
fn crop_area_and_ratio_stay_in_range() {
    let cfg = AugmentConfig::default();
    let mut aug = Augmenter::new(cfg, 2024).unwrap();
    for (w, h) in [(451u32, 300u32), (224, 224), (300, 451), (640, 480)] {
        let area = f64::from(w * h);
        let mut min_frac = f64::INFINITY;
        let mut max_frac: f64 = 0.0;
        for _ in 0..2000 {
            let (x, y, cw, ch) = aug.sample_crop(w, h);
            assert!(
                cw > 0 && ch > 0 && x + cw <= w && y + ch <= h,
                "{w}x{h}: {x},{y},{cw},{ch}"
            );
            let frac = f64::from(cw * ch) / area;
            min_frac = min_frac.min(frac);
            max_frac = max_frac.max(frac);
            // Rounding of the side lengths allows a small slack.
            assert!(
                (0.2 - 0.01..=1.0).contains(&frac),
                "{w}x{h}: area fraction {frac}"
            );
            let r = f64::from(cw) / f64::from(ch);
            assert!((0.75 * 0.98..=4.0 / 3.0 * 1.02).contains(&r), "ratio {r}");
        }
        assert!(min_frac < 0.3, "{w}x{h}: smallest crop fraction {min_frac}");
        assert!(max_frac > 0.8, "{w}x{h}: largest crop fraction {max_frac}");
    }
}

#[test]
fn crop_fallback_is_centred() {
    // Very wide / tall images with scale (1, 1): no try fits, so the centre
    // crop at the nearest allowed ratio (4/3, 3/4) is taken.
    let cfg = AugmentConfig {
        scale: (1.0, 1.0),
        ..AugmentConfig::default()
    };
    let mut aug = Augmenter::new(cfg, 9).unwrap();
    assert_eq!(aug.sample_crop(1000, 120), (420, 0, 160, 120));
    assert_eq!(aug.sample_crop(120, 1000), (0, 420, 120, 160));
}

#[test]
fn grayscale_p1_gives_equal_channels() {
    let img = chelsea();
    let cfg = AugmentConfig {
        out_size: (64, 64),
        grayscale_p: 1.0,
        ..AugmentConfig::default()
    };
    let mut aug = Augmenter::new(cfg, 13).unwrap();
    for v in aug.views(&img, 10) {
        assert!(v.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
        assert!(v.pixels().any(|p| p[0] != v.get_pixel(0, 0)[0]));
    }
}

#[test]
fn jitter_changes_colours_and_blur_smooths() {
    let img = chelsea();
    let out = (96, 64);
    let plain = imageops::resize(&img, out.0, out.1, FilterType::Triangle);
    let jitter = AugmentConfig {
        jitter_p: 1.0,
        ..identity_for(&img, out)
    };
    let mut aug = Augmenter::new(jitter, 17).unwrap();
    for v in aug.views(&img, 5) {
        assert_eq!(v.dimensions(), out);
        assert_ne!(v, plain);
    }
    // Zero-strength jitter is the identity up to float rounding.
    let noop = AugmentConfig {
        jitter_p: 1.0,
        brightness: 0.0,
        contrast: 0.0,
        saturation: 0.0,
        hue: 0.0,
        ..identity_for(&img, out)
    };
    let v = Augmenter::new(noop, 17).unwrap().view(&img);
    for (a, b) in v.pixels().zip(plain.pixels()) {
        for c in 0..3 {
            assert!((i16::from(a[c]) - i16::from(b[c])).abs() <= 1);
        }
    }
    // Blur lowers the total variation.
    let blur = AugmentConfig {
        blur_p: 1.0,
        blur_sigma: (1.5, 2.0),
        ..identity_for(&img, out)
    };
    let tv = |im: &RgbImage| -> u64 {
        let mut s = 0u64;
        for y in 0..im.height() {
            for x in 1..im.width() {
                for c in 0..3 {
                    s += u64::from(im.get_pixel(x, y)[c].abs_diff(im.get_pixel(x - 1, y)[c]));
                }
            }
        }
        s
    };
    let v = Augmenter::new(blur, 17).unwrap().view(&img);
    assert!(tv(&v) < tv(&plain) * 3 / 4, "{} vs {}", tv(&v), tv(&plain));
}

#[test]
fn resume_reproduces_uninterrupted_run() {
    let img = chelsea();
    let cfg = AugmentConfig {
        out_size: (80, 80),
        ..AugmentConfig::default()
    };
    let mut straight = Augmenter::new(cfg.clone(), 42).unwrap();
    let all = straight.views(&img, 7);

    // The interrupted run: three views, then its state goes to a checkpoint.
    let (head, json) = {
        let mut first = Augmenter::new(cfg.clone(), 42).unwrap();
        let head = first.views(&img, 3);
        (head, serde_json::to_string(&first.rng_state()).unwrap())
    };
    let state = serde_json::from_str(&json).unwrap();
    let mut resumed = Augmenter::resume(cfg, state).unwrap();
    assert_eq!(resumed.rng_state(), state);
    let tail = resumed.views(&img, 4);

    assert_eq!(head, all[..3]);
    assert_eq!(tail, all[3..]);
    assert_eq!(resumed.rng_state(), straight.rng_state());
}

#[test]
fn resume_mid_block() {
    // One crop sample consumes an odd number of words; resume right after it.
    let cfg = AugmentConfig::default();
    let mut a = Augmenter::new(cfg.clone(), 3).unwrap();
    a.sample_crop(451, 300);
    let st = a.rng_state();
    let mut b = Augmenter::resume(cfg, st).unwrap();
    let img = gradient(50, 40);
    assert_eq!(a.views(&img, 3), b.views(&img, 3));
}

#[test]
fn invalid_configs_are_errors() {
    let base = AugmentConfig::default();
    let bad = [
        AugmentConfig {
            out_size: (0, 224),
            ..base.clone()
        },
        AugmentConfig {
            scale: (0.0, 1.0),
            ..base.clone()
        },
        AugmentConfig {
            scale: (0.5, 1.5),
            ..base.clone()
        },
        AugmentConfig {
            scale: (0.8, 0.3),
            ..base.clone()
        },
        AugmentConfig {
            scale: (f32::NAN, 1.0),
            ..base.clone()
        },
        AugmentConfig {
            ratio: (4.0 / 3.0, 0.75),
            ..base.clone()
        },
        AugmentConfig {
            ratio: (0.0, 1.0),
            ..base.clone()
        },
        AugmentConfig {
            hflip_p: 1.5,
            ..base.clone()
        },
        AugmentConfig {
            jitter_p: -0.1,
            ..base.clone()
        },
        AugmentConfig {
            grayscale_p: f32::NAN,
            ..base.clone()
        },
        AugmentConfig {
            blur_p: 2.0,
            ..base.clone()
        },
        AugmentConfig {
            brightness: -0.4,
            ..base.clone()
        },
        AugmentConfig {
            hue: 0.6,
            ..base.clone()
        },
        AugmentConfig {
            blur_sigma: (2.0, 0.1),
            ..base.clone()
        },
        AugmentConfig {
            blur_sigma: (0.0, 1.0),
            ..base.clone()
        },
    ];
    for cfg in bad {
        let e = Augmenter::new(cfg.clone(), 0).expect_err(&format!("{cfg:?} accepted"));
        assert!(matches!(e, AugmentError::Config(_)));
        assert!(cfg.validate().is_err());
    }
    // Boundary values are fine.
    let ok = AugmentConfig {
        scale: (1.0, 1.0),
        ratio: (1.0, 1.0),
        hflip_p: 0.0,
        jitter_p: 1.0,
        hue: 0.5,
        ..base
    };
    Augmenter::new(ok, 0).unwrap();
}
