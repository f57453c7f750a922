//! TEMPORARY manual check (to be deleted): dumps every tensor of $GGUF_CHECK to $GGUF_OUT.
use lmq_runtime::gguf::GgufFile;
use std::io::Write;

#[test]
fn dump_all() {
    let Ok(path) = std::env::var("GGUF_CHECK") else { return };
    let out = std::path::PathBuf::from(std::env::var("GGUF_OUT").unwrap());
    std::fs::create_dir_all(&out).unwrap();
    let t0 = std::time::Instant::now();
    let g = GgufFile::open(std::path::Path::new(&path)).unwrap();
    println!("open: {:?} version {} alignment {} data_offset {} tensors {}", t0.elapsed(), g.version, g.alignment, g.data_offset, g.tensors.len());
    for (k, v) in &g.metadata {
        let s = match v {
            lmq_runtime::gguf::MetaValue::Array(a) => format!("Array[{}] first={:?}", a.len(), a.first()),
            other => format!("{other:?}"),
        };
        println!("KV {k} = {}", &s[..s.len().min(150)]);
    }
    let mut idx = std::fs::File::create(out.join("index.tsv")).unwrap();
    let mut total = 0usize;
    let t1 = std::time::Instant::now();
    let mut counts = std::collections::BTreeMap::new();
    for t in &g.tensors {
        let v = g.tensor_f32(&t.name).unwrap();
        let nonfinite = v.iter().filter(|x| !x.is_finite()).count();
        assert_eq!(nonfinite, 0, "{}", t.name);
        total += v.len();
        *counts.entry(format!("{:?}", t.dtype)).or_insert(0) += 1;
        let maxabs = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        writeln!(idx, "{}\t{:?}\t{:?}\t{}\t{}", t.name, t.dtype, t.dims, v.len(), maxabs).unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(out.join(format!("{}.bin", t.name)), bytes).unwrap();
    }
    println!("dequantized {total} values in {:?} (incl. writing) types {counts:?}", t1.elapsed());
    let t2 = std::time::Instant::now();
    for t in &g.tensors { let _ = g.tensor_f32(&t.name).unwrap(); }
    println!("dequantize only: {:?}", t2.elapsed());
}
