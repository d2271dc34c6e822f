//! The C ABI called the way C calls it: raw pointers, handles by value,
//! status codes. Every misuse the module docs promise to reject is tried here.

use std::ffi::{c_char, CString};
use std::ptr;

use super::status::{guard, last_error_string, FfiError};
use super::*;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/mobilenet_v2/manifest.toml"
);

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn new_knn(dim: usize, k: usize) -> EdgeclrKnn {
    let mut h = EdgeclrKnn { id: 0 };
    assert_eq!(
        unsafe { edgeclr_knn_new(dim, k, &mut h) },
        EdgeclrStatus::Ok
    );
    assert_ne!(h.id, 0);
    h
}

fn enroll(h: EdgeclrKnn, class: &str, v: &[f32]) -> EdgeclrStatus {
    let name = cstr(class);
    unsafe { edgeclr_knn_enroll(h, name.as_ptr(), v.as_ptr(), v.len()) }
}

fn predict(h: EdgeclrKnn, v: &[f32]) -> (EdgeclrStatus, usize, f32) {
    let (mut class, mut score) = (usize::MAX, -1.0);
    let status = unsafe { edgeclr_knn_predict(h, v.as_ptr(), v.len(), &mut class, &mut score) };
    (status, class, score)
}

fn class_name(h: EdgeclrKnn, index: usize) -> String {
    let mut buf = [0 as c_char; 64];
    let status = unsafe { edgeclr_knn_class_name(h, index, buf.as_mut_ptr(), 64, ptr::null_mut()) };
    assert_eq!(status, EdgeclrStatus::Ok, "{}", last_error_string());
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn knn_enrol_predict_forget_save_load() {
    let h = new_knn(3, 1);
    assert_eq!(enroll(h, "x", &[1.0, 0.0, 0.0]), EdgeclrStatus::Ok);
    assert_eq!(enroll(h, "y", &[0.0, 1.0, 0.0]), EdgeclrStatus::Ok);
    let (status, class, score) = predict(h, &[0.1, 0.9, 0.0]);
    assert_eq!((status, class), (EdgeclrStatus::Ok, 1));
    assert!(score > 0.99);
    assert_eq!(class_name(h, 1), "y");

    let dir = std::env::temp_dir().join(format!("edgeclr-capi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = cstr(dir.join("head.json").to_str().expect("utf-8"));
    assert_eq!(
        unsafe { edgeclr_knn_save(h, path.as_ptr()) },
        EdgeclrStatus::Ok
    );
    let mut loaded = EdgeclrKnn { id: 0 };
    assert_eq!(
        unsafe { edgeclr_knn_load(path.as_ptr(), &mut loaded) },
        EdgeclrStatus::Ok
    );
    assert_eq!(predict(loaded, &[0.9, 0.1, 0.0]).1, 0);

    let mut removed = 0;
    let x = cstr("x");
    assert_eq!(
        unsafe { edgeclr_knn_forget(loaded, x.as_ptr(), &mut removed) },
        EdgeclrStatus::Ok
    );
    assert_eq!(removed, 1);
    let mut n = 0;
    assert_eq!(
        unsafe { edgeclr_knn_num_classes(loaded, &mut n) },
        EdgeclrStatus::Ok
    );
    assert_eq!(n, 1);
    assert_eq!(
        unsafe { edgeclr_knn_forget(loaded, x.as_ptr(), ptr::null_mut()) },
        EdgeclrStatus::Probe
    );
    assert!(
        last_error_string().contains("unknown class"),
        "{}",
        last_error_string()
    );
    assert_eq!(edgeclr_knn_free(h), EdgeclrStatus::Ok);
    assert_eq!(edgeclr_knn_free(loaded), EdgeclrStatus::Ok);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn null_and_freed_handles_are_rejected() {
    let v = [1.0f32, 0.0];
    let null = EdgeclrKnn { id: 0 };
    assert_eq!(enroll(null, "a", &v), EdgeclrStatus::NullHandle);
    assert!(last_error_string().contains("null"));

    let h = new_knn(2, 1);
    assert_eq!(edgeclr_knn_free(h), EdgeclrStatus::Ok);
    assert_eq!(enroll(h, "a", &v), EdgeclrStatus::InvalidHandle);
    assert!(
        last_error_string().contains("already freed"),
        "{}",
        last_error_string()
    );
    assert_eq!(
        edgeclr_knn_free(h),
        EdgeclrStatus::InvalidHandle,
        "double free"
    );

    let never = EdgeclrKnn { id: u64::MAX };
    assert_eq!(enroll(never, "a", &v), EdgeclrStatus::InvalidHandle);
    assert!(last_error_string().contains("never issued"));

    // A k-NN id used as a probe: the kind is checked, not just the id.
    let h = new_knn(2, 1);
    let mut n = 0;
    let as_probe = EdgeclrProbe { id: h.id };
    assert_eq!(
        unsafe { edgeclr_probe_num_classes(as_probe, &mut n) },
        EdgeclrStatus::InvalidHandle
    );
    assert!(last_error_string().contains("not a linear probe"));
    assert_eq!(edgeclr_probe_free(as_probe), EdgeclrStatus::InvalidHandle);
    assert_eq!(edgeclr_knn_free(h), EdgeclrStatus::Ok);
}

#[test]
fn bad_pointers_sizes_and_strings_are_rejected() {
    let h = new_knn(2, 1);
    let v = [1.0f32, 0.0];
    let a = cstr("a");
    // NULL string, NULL buffer, NULL out-parameter.
    assert_eq!(
        unsafe { edgeclr_knn_enroll(h, ptr::null(), v.as_ptr(), 2) },
        EdgeclrStatus::NullPointer
    );
    assert_eq!(
        unsafe { edgeclr_knn_enroll(h, a.as_ptr(), ptr::null(), 2) },
        EdgeclrStatus::NullPointer
    );
    assert_eq!(
        unsafe { edgeclr_knn_new(2, 1, ptr::null_mut()) },
        EdgeclrStatus::NullPointer
    );
    // Wrong length.
    assert_eq!(
        unsafe { edgeclr_knn_enroll(h, a.as_ptr(), v.as_ptr(), 1) },
        EdgeclrStatus::BufferSize
    );
    assert!(
        last_error_string().contains("expected 2"),
        "{}",
        last_error_string()
    );
    // Misaligned float buffer.
    let raw = [0u8; 16];
    let odd = raw[1..].as_ptr().cast::<f32>();
    assert_eq!(
        unsafe { edgeclr_knn_enroll(h, a.as_ptr(), odd, 2) },
        EdgeclrStatus::InvalidArgument
    );
    // Not UTF-8.
    let latin1 = CString::new(vec![b'c', 0xe9]).expect("no NUL");
    assert_eq!(
        unsafe { edgeclr_knn_enroll(h, latin1.as_ptr(), v.as_ptr(), 2) },
        EdgeclrStatus::InvalidArgument
    );
    assert!(last_error_string().contains("UTF-8"));
    let mut out = EdgeclrKnn { id: 0 };
    assert_eq!(
        unsafe { edgeclr_knn_load(latin1.as_ptr(), &mut out) },
        EdgeclrStatus::InvalidArgument
    );
    assert_eq!(out.id, 0, "nothing written on failure");
    // Missing file.
    let missing = cstr("/nonexistent/head.json");
    assert_eq!(
        unsafe { edgeclr_knn_load(missing.as_ptr(), &mut out) },
        EdgeclrStatus::Io
    );
    // Zero-width head, k = 0.
    assert_eq!(
        unsafe { edgeclr_knn_new(0, 1, &mut out) },
        EdgeclrStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { edgeclr_knn_new(2, 0, &mut out) },
        EdgeclrStatus::InvalidArgument
    );
    // Empty head, class index out of range, too-small name buffer.
    assert_eq!(predict(h, &v).0, EdgeclrStatus::Probe);
    assert_eq!(enroll(h, "abc", &v), EdgeclrStatus::Ok);
    let mut needed = 0;
    let status = unsafe { edgeclr_knn_class_name(h, 0, ptr::null_mut(), 0, &mut needed) };
    assert_eq!((status, needed), (EdgeclrStatus::BufferSize, 4));
    let mut buf = [0 as c_char; 3];
    let status = unsafe { edgeclr_knn_class_name(h, 0, buf.as_mut_ptr(), 3, &mut needed) };
    assert_eq!(status, EdgeclrStatus::BufferSize);
    let status = unsafe { edgeclr_knn_class_name(h, 5, buf.as_mut_ptr(), 3, &mut needed) };
    assert_eq!(status, EdgeclrStatus::InvalidArgument);
    assert_eq!(edgeclr_knn_free(h), EdgeclrStatus::Ok);
}

#[test]
fn a_second_thread_on_a_busy_handle_gets_busy() {
    let h = new_knn(2, 1);
    let v = [1.0f32, 0.0];
    // Hold the handle as a long call on another thread would, and call in.
    let status = registry::hold(h.id, "k-NN head", || {
        std::thread::spawn(move || enroll(h, "a", &v))
            .join()
            .expect("thread")
    });
    assert_eq!(status, EdgeclrStatus::Busy);
    // Once released it works again.
    assert_eq!(enroll(h, "a", &v), EdgeclrStatus::Ok);
    assert_eq!(edgeclr_knn_free(h), EdgeclrStatus::Ok);
}

#[test]
fn errors_are_per_thread_and_panics_are_caught() {
    assert_eq!(
        enroll(EdgeclrKnn { id: 0 }, "a", &[1.0]),
        EdgeclrStatus::NullHandle
    );
    let other = std::thread::spawn(last_error_string)
        .join()
        .expect("thread");
    assert_eq!(other, "", "another thread sees no error");
    let status = guard(|| -> Result<(), FfiError> { panic!("boom") });
    assert_eq!(status, EdgeclrStatus::Internal);
    assert!(last_error_string().contains("boom"));
    let name = unsafe { std::ffi::CStr::from_ptr(edgeclr_status_name(6)) };
    assert_eq!(name.to_str(), Ok("EDGECLR_STATUS_BUSY"));
    let name = unsafe { std::ffi::CStr::from_ptr(edgeclr_status_name(-1)) };
    assert_eq!(name.to_str(), Ok("EDGECLR_STATUS_UNKNOWN"));
}

/// A deterministic RGB8 image: a diagonal colour gradient, tilted by `phase`.
fn image(w: usize, h: usize, phase: usize) -> Vec<u8> {
    (0..w * h * 3)
        .map(|i| {
            let (p, c) = (i / 3, i % 3);
            let (x, y) = (p % w, p / w);
            ((x * (c + 1) + y * (3 - c) + phase * 40) % 256) as u8
        })
        .collect()
}

#[test]
fn model_embed_and_adapt_through_the_abi() {
    let path = cstr(MODEL);
    let mut model = EdgeclrModel { id: 0 };
    let status = unsafe { edgeclr_model_open(path.as_ptr(), 1, &mut model) };
    assert_eq!(status, EdgeclrStatus::Ok, "{}", last_error_string());
    let mut dim = 0;
    assert_eq!(
        unsafe { edgeclr_model_embedding_dim(model, &mut dim) },
        EdgeclrStatus::Ok
    );
    assert_eq!(dim, 1280);

    // Strided input (4 bytes of padding per row) gives the same embedding as packed.
    let (w, h) = (40, 30);
    let packed = image(w, h, 0);
    let stride = w * 3 + 4;
    let mut padded = vec![0xAAu8; stride * h];
    for y in 0..h {
        padded[y * stride..y * stride + w * 3].copy_from_slice(&packed[y * w * 3..(y + 1) * w * 3]);
    }
    let mut e1 = vec![0.0f32; dim];
    let mut e2 = vec![0.0f32; dim];
    let embed = |buf: &[u8], stride: usize, out: &mut [f32]| unsafe {
        edgeclr_model_embed_rgb8(
            model,
            buf.as_ptr(),
            buf.len(),
            w as u32,
            h as u32,
            stride,
            out.as_mut_ptr(),
            out.len(),
        )
    };
    assert_eq!(
        embed(&packed, w * 3, &mut e1),
        EdgeclrStatus::Ok,
        "{}",
        last_error_string()
    );
    assert_eq!(embed(&padded, stride, &mut e2), EdgeclrStatus::Ok);
    assert_eq!(e1, e2);
    assert!(e1.iter().all(|v| v.is_finite()) && e1.iter().any(|v| *v != 0.0));

    // Wrong sizes: output one short, input one byte short, stride too small.
    assert_eq!(
        embed(&packed, w * 3, &mut e2[..dim - 1]),
        EdgeclrStatus::BufferSize
    );
    assert_eq!(
        embed(&packed[..packed.len() - 1], w * 3, &mut e2),
        EdgeclrStatus::BufferSize
    );
    assert_eq!(
        embed(&packed, w * 3 - 1, &mut e2),
        EdgeclrStatus::InvalidArgument
    );

    // Trainer: unknown config key, then two steps on in-batch negatives.
    let mut trainer = EdgeclrTrainer { id: 0 };
    let bad = cstr(r#"{"lr": 0.01, "bogus": 1}"#);
    let status = unsafe { edgeclr_trainer_new(model, bad.as_ptr(), 1, &mut trainer) };
    assert_eq!(status, EdgeclrStatus::InvalidArgument);
    assert!(last_error_string().contains("bogus"));
    let config =
        cstr(r#"{"loss": "infonce:tau=0.2", "bank_size": 0, "batch_size": 4, "lr": 0.001}"#);
    let status = unsafe { edgeclr_trainer_new(model, config.as_ptr(), 2, &mut trainer) };
    assert_eq!(status, EdgeclrStatus::Ok, "{}", last_error_string());
    let rows = 4;
    let mut x1 = vec![0.0f32; rows * dim];
    let mut x2 = vec![0.0f32; rows * dim];
    for r in 0..rows {
        for c in 0..dim {
            x1[r * dim + c] = e1[c] * (1.0 + 0.1 * r as f32) + (r * c % 7) as f32 * 0.01;
            x2[r * dim + c] = x1[r * dim + c] + ((c + r) % 5) as f32 * 0.01;
        }
    }
    let mut report = EdgeclrStepReport::default();
    for step in 1..=2 {
        let status = unsafe {
            edgeclr_trainer_step(trainer, x1.as_ptr(), x2.as_ptr(), rows, dim, &mut report)
        };
        assert_eq!(status, EdgeclrStatus::Ok, "{}", last_error_string());
        assert_eq!(report.step, step);
        assert!(report.loss.is_finite() && report.grad_norm > 0.0);
    }
    let wrong_width = unsafe {
        edgeclr_trainer_step(
            trainer,
            x1.as_ptr(),
            x2.as_ptr(),
            rows,
            dim - 1,
            ptr::null_mut(),
        )
    };
    assert_eq!(wrong_width, EdgeclrStatus::BufferSize);
    let mut adapted = vec![0.0f32; rows * dim];
    let status = unsafe {
        edgeclr_trainer_adapt(
            trainer,
            x1.as_ptr(),
            rows,
            dim,
            adapted.as_mut_ptr(),
            adapted.len(),
        )
    };
    assert_eq!(status, EdgeclrStatus::Ok);

    // Save, resume, and the resumed trainer adapts identically.
    let dir = std::env::temp_dir().join(format!("edgeclr-capi-t-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ckpt = cstr(dir.join("ckpt.safetensors").to_str().expect("utf-8"));
    assert_eq!(
        unsafe { edgeclr_trainer_save(trainer, ckpt.as_ptr()) },
        EdgeclrStatus::Ok
    );
    let mut resumed = EdgeclrTrainer { id: 0 };
    let status = unsafe { edgeclr_trainer_load(model, ckpt.as_ptr(), 2, &mut resumed) };
    assert_eq!(status, EdgeclrStatus::Ok, "{}", last_error_string());
    let mut again = vec![0.0f32; rows * dim];
    let status = unsafe {
        edgeclr_trainer_adapt(
            resumed,
            x1.as_ptr(),
            rows,
            dim,
            again.as_mut_ptr(),
            again.len(),
        )
    };
    assert_eq!(status, EdgeclrStatus::Ok);
    assert_eq!(adapted, again);
    // The one resume policy (edgeclr::adapt::resume, as `edgeclr adapt
    // --resume` and `camera-adapt --resume`): stated settings must be the
    // checkpoint's; a difference is refused naming each one.
    let other = cstr(r#"{"loss": "infonce:tau=0.2", "bank_size": 0, "batch_size": 4, "lr": 0.01}"#);
    let mut refused = EdgeclrTrainer { id: 0 };
    let status =
        unsafe { edgeclr_trainer_resume(model, ckpt.as_ptr(), other.as_ptr(), 2, &mut refused) };
    assert_eq!(status, EdgeclrStatus::Checkpoint);
    assert!(
        last_error_string().contains("lr is 0.001 there, 0.01 here"),
        "{}",
        last_error_string()
    );
    assert_eq!(refused.id, 0);
    let mut stated = EdgeclrTrainer { id: 0 };
    let status =
        unsafe { edgeclr_trainer_resume(model, ckpt.as_ptr(), config.as_ptr(), 2, &mut stated) };
    assert_eq!(status, EdgeclrStatus::Ok, "{}", last_error_string());
    let missing = cstr(dir.join("none.safetensors").to_str().expect("utf-8"));
    let status = unsafe {
        edgeclr_trainer_resume(model, missing.as_ptr(), config.as_ptr(), 2, &mut refused)
    };
    assert_eq!(status, EdgeclrStatus::Io, "{}", last_error_string());
    assert_eq!(edgeclr_trainer_free(stated), EdgeclrStatus::Ok);
    // A key stored only when set (anchor) is a key all the same.
    let anchored = cstr(r#"{"anchor": 0.01, "bank_size": 0}"#);
    let mut t = EdgeclrTrainer { id: 0 };
    let status = unsafe { edgeclr_trainer_new(model, anchored.as_ptr(), 1, &mut t) };
    assert_eq!(status, EdgeclrStatus::Ok, "{}", last_error_string());
    assert_eq!(edgeclr_trainer_free(t), EdgeclrStatus::Ok);
    // A model handle where a trainer is expected.
    assert_eq!(
        edgeclr_trainer_free(EdgeclrTrainer { id: model.id }),
        EdgeclrStatus::InvalidHandle
    );
    assert_eq!(edgeclr_trainer_free(trainer), EdgeclrStatus::Ok);
    assert_eq!(edgeclr_trainer_free(resumed), EdgeclrStatus::Ok);
    assert_eq!(edgeclr_model_free(model), EdgeclrStatus::Ok);
    assert_eq!(embed(&packed, w * 3, &mut e2), EdgeclrStatus::InvalidHandle);
    std::fs::remove_dir_all(&dir).ok();
}
