//! Re-encoding GGUF tensors into block formats candle computes fast on CPU.
//!
//! candle 0.10.2 has AVX2 dot products for Q4_0, Q8_0 and the K-quants, and only a scalar loop
//! for Q4_1, Q5_0 and Q5_1: on SmolLM2 (Q4_1) that loop was 55% of decode time. Rapport's
//! patched candle adds an AVX2 Q4_1 kernel (vendor/PATCHES.md), which decodes SmolLM2 faster
//! than a Q8_0 copy and computes the weights as shipped, so Q4_1 is loaded as it is. Q5_0 and
//! Q5_1 tensors are re-encoded as Q8_0 once, into a cached copy of the file. Q8_0 (8-bit blocks
//! of 32) is finer than either, so the copy computes what the original does to within Q8_0's
//! rounding.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use sha2::{Digest, Sha256};

/// Formats without a SIMD kernel in candle 0.10.2, and what they become.
fn fast_format(dtype: GgmlDType) -> Option<GgmlDType> {
    match dtype {
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => Some(GgmlDType::Q8_0),
        _ => None,
    }
}

/// What [`prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The file to load.
    pub path: PathBuf,
    /// Tensors re-encoded (0 when the original is loaded as it is).
    pub repacked_tensors: usize,
}

/// Returns the file the embedded engine should load: `gguf` itself when all its tensors have fast
/// kernels, else a copy under `cache_dir` with the slow ones re-encoded (made on first use).
pub fn prepare(gguf: &Path, cache_dir: &Path) -> Result<Prepared, String> {
    let mut reader =
        BufReader::new(File::open(gguf).map_err(|e| format!("{}: {e}", gguf.display()))?);
    let content = gguf_file::Content::read(&mut reader)
        .map_err(|e| format!("{}: not a GGUF file ({e})", gguf.display()))?;
    let slow =
        content.tensor_infos.values().filter(|t| fast_format(t.ggml_dtype).is_some()).count();
    if slow == 0 {
        return Ok(Prepared { path: gguf.to_path_buf(), repacked_tensors: 0 });
    }
    let target = cache_dir.join(format!("{}.{}.rapport-q8_0.gguf", stem(gguf), identity(gguf)?));
    if target.is_file() {
        return Ok(Prepared { path: target, repacked_tensors: slow });
    }

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let t =
            content.tensor(&mut reader, name, &Device::Cpu).map_err(|e| format!("{name}: {e}"))?;
        let t = match fast_format(t.dtype()) {
            Some(to) if t.shape().dims().last().is_some_and(|d| d % to.block_size() == 0) => {
                let dense = t.dequantize(&Device::Cpu).map_err(|e| format!("{name}: {e}"))?;
                QTensor::quantize(&dense, to).map_err(|e| format!("{name}: {e}"))?
            }
            _ => t,
        };
        tensors.push((name.as_str(), t));
    }
    let mut metadata: Vec<(&String, &gguf_file::Value)> = content.metadata.iter().collect();
    metadata.sort_by(|a, b| a.0.cmp(b.0));
    let metadata: Vec<(&str, &gguf_file::Value)> =
        metadata.into_iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();

    std::fs::create_dir_all(cache_dir).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
    let tmp = target.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp).map_err(|e| e.to_string())?);
        gguf_file::write(&mut out, &metadata, &refs).map_err(|e| e.to_string())?;
        out.into_inner().map_err(|e| e.to_string())?.sync_all().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &target).map_err(|e| e.to_string())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("writing {}: {e}", target.display()));
    }
    Ok(Prepared { path: target, repacked_tensors: slow })
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

/// Identifies the source file's content cheaply: its size, its first and last MiB, and the
/// format version of the conversion. A re-pulled or edited file gets a new copy.
fn identity(path: &Path) -> Result<String, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut h = Sha256::new();
    h.update(b"rapport repack q8_0 v1\0");
    h.update(len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    for start in [0, len.saturating_sub(1 << 20)] {
        f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        h.update(&buf[..n]);
    }
    Ok(hex::encode(&h.finalize()[..8]))
}

/// Counts tensors per block format (for logs and tests).
pub fn formats(gguf: &Path) -> Result<HashMap<String, usize>, String> {
    let mut reader = BufReader::new(File::open(gguf).map_err(|e| e.to_string())?);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for t in content.tensor_infos.values() {
        *out.entry(format!("{:?}", t.ggml_dtype)).or_insert(0) += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn write_gguf(path: &Path, tensors: &[(&str, QTensor)]) {
        let arch = gguf_file::Value::String("llama".into());
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        let mut f = File::create(path).unwrap();
        gguf_file::write(&mut f, &[("general.architecture", &arch)], &refs).unwrap();
    }

    fn weights(rows: usize, cols: usize) -> Tensor {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32))
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn files_with_fast_formats_are_loaded_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.gguf");
        write_gguf(
            &src,
            &[
                ("w", QTensor::quantize(&weights(4, 64), GgmlDType::Q4_0).unwrap()),
                // Q4_1 has its own kernel in the patched candle.
                ("v", QTensor::quantize(&weights(4, 64), GgmlDType::Q4_1).unwrap()),
            ],
        );
        let p = prepare(&src, &dir.path().join("cache")).unwrap();
        assert_eq!(p, Prepared { path: src, repacked_tensors: 0 });
    }

    #[test]
    fn q5_1_is_re_encoded_within_a_q8_0_rounding_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.gguf");
        let original = QTensor::quantize(&weights(8, 128), GgmlDType::Q5_1).unwrap();
        let keep = QTensor::quantize(&weights(2, 64), GgmlDType::Q8_0).unwrap();
        write_gguf(&src, &[("slow", original), ("other", keep)]);
        let cache = dir.path().join("cache");
        let p = prepare(&src, &cache).unwrap();
        assert_eq!(p.repacked_tensors, 1);
        assert_ne!(p.path, src);
        let counts = formats(&p.path).unwrap();
        assert_eq!(counts.get("Q5_1"), None, "{counts:?}");

        // Every weight moved by at most 0.6 of a Q8_0 step of its block (step = max|x| / 127):
        // half a step of rounding, plus the f16 rounding of the block's scale (up to 127 * 2^-11 step).
        let mut r = BufReader::new(File::open(&src).unwrap());
        let before =
            gguf_file::Content::read(&mut r).unwrap().tensor(&mut r, "slow", &Device::Cpu).unwrap();
        let mut r = BufReader::new(File::open(&p.path).unwrap());
        let content = gguf_file::Content::read(&mut r).unwrap();
        let after = content.tensor(&mut r, "slow", &Device::Cpu).unwrap();
        assert_eq!(after.dtype(), GgmlDType::Q8_0);
        let b = before
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let a = after
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (bb, ab) in b.chunks(32).zip(a.chunks(32)) {
            let step = bb.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            for (x, y) in bb.iter().zip(ab) {
                assert!((x - y).abs() <= step * 0.6, "{x} vs {y} (step {step})");
            }
        }
        assert_eq!(content.metadata["general.architecture"].to_string().unwrap(), "llama");

        // The second call reuses the copy.
        let mtime = std::fs::metadata(&p.path).unwrap().modified().unwrap();
        let again = prepare(&src, &cache).unwrap();
        assert_eq!(again, p);
        assert_eq!(std::fs::metadata(&p.path).unwrap().modified().unwrap(), mtime);
    }

    #[test]
    fn a_file_that_is_not_gguf_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("junk.gguf");
        std::fs::write(&src, b"definitely not a model").unwrap();
        let e = prepare(&src, dir.path()).unwrap_err();
        assert!(e.contains("not a GGUF file"), "{e}");
    }
}
