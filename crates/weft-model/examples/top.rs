//! Prints the first-step top-10 probabilities for a prompt (debugging aid).
use weft_model::sampling::softmax;
use weft_model::session::Session;
use weft_model::{LoadOptions, Model, Tokenizer};
fn main() {
    let path = std::path::PathBuf::from(std::env::args().nth(1).expect("model path"));
    let prompt = std::env::args().nth(2).expect("prompt");
    let model = Model::load(&path, &LoadOptions::default()).unwrap();
    let tok = Tokenizer::load(&path).unwrap();
    let ids = tok.encode(&prompt, true).unwrap();
    let mut s = Session::new(&model, ids.len() + 1);
    let p = softmax(&s.feed(&ids, false).unwrap());
    let mut o: Vec<usize> = (0..p.len()).collect();
    o.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
    for i in &o[..10] {
        print!("({i}, {:.4}) ", p[*i]);
    }
    println!();
}
