use std::path::Path;
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let p = Path::new(&dir);
    let t = std::time::Instant::now();
    let tok = weft_train::data::load_tokenizer(&p.join("tokenizer.json")).unwrap();
    let sp = weft_train::data::Specials::from_tokenizer(&tok, p).unwrap();
    let docs = weft_train::data::load_documents(&p.join("train.jsonl"), &tok, sp).unwrap();
    let n: usize = docs.iter().map(|d| d.tokens.len()).sum();
    println!(
        "{} docs {} tokens in {:.1}s",
        docs.len(),
        n,
        t.elapsed().as_secs_f64()
    );
}
