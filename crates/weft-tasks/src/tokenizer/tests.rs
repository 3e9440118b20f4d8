use super::*;

const EXAMPLE: &str = include_str!("../../tests/fixtures/apr_trace_example.txt");
const SOSP: &str = include_str!("../../tests/fixtures/sosp_trace_example.txt");

fn hf_ids(hf: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    hf.encode(text, false).unwrap().get_ids().to_vec()
}

#[test]
fn native_and_hf_agree_and_round_trip() {
    let odd = "Sub Call Budget: 3 07 1234 0 999 1000 x\té ['1+2=3', '4*5=20'] []\n";
    for mode in [NumberMode::Whole, NumberMode::Digits] {
        let tok = TraceTokenizer::new(mode);
        let hf = tok.to_hf().unwrap();
        assert_eq!(hf.get_vocab_size(true), tok.vocab_size());
        for text in [
            EXAMPLE,
            SOSP,
            odd,
            "",
            "12",
            "<Sub Searches>\n<End Sub Searches>\n",
        ] {
            let ids = tok.encode(text);
            assert_eq!(hf_ids(&hf, text), ids, "{mode:?} {text:?}");
            if !text.contains('é') {
                assert_eq!(tok.decode(&ids), text);
                assert_eq!(hf.decode(&ids, true).unwrap(), text);
            }
        }
        let with_bos = hf.encode("12", true).unwrap();
        assert_eq!(with_bos.get_ids()[0], 1, "the post-processor adds <s>");
    }
}

#[test]
fn pieces_are_what_the_docs_say() {
    let tok = TraceTokenizer::new(NumberMode::Whole);
    let pieces = |text: &str| -> Vec<String> {
        tok.encode(text)
            .iter()
            .map(|&id| tok.token(id).unwrap().to_string())
            .collect()
    };
    assert_eq!(
        pieces("Current State: 63:[62, 7], Operations: ['25-17=8']\n"),
        [
            "Current State: ",
            "63",
            ":",
            "[",
            "62",
            ", ",
            "7",
            "]",
            ", Operations: ",
            "['",
            "25",
            "-",
            "17",
            "=",
            "8",
            "']",
            "\n"
        ]
    );
    assert_eq!(pieces("1550"), ["1", "5", "5", "0"]);
    assert_eq!(pieces("07"), ["0", "7"]);
    assert_eq!(
        pieces("No solution found in sub search"),
        ["No solution found in sub search"]
    );
    assert_eq!(pieces("é"), [UNK]);
    let digits = TraceTokenizer::new(NumberMode::Digits);
    assert_eq!(digits.count("63:[62, 7]"), 9);
    assert_eq!(tok.count("63:[62, 7]"), 7);
}

#[test]
fn saved_file_loads_back() {
    let dir = std::env::temp_dir().join(format!("weft-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    let tok = TraceTokenizer::new(NumberMode::Whole);
    tok.save(&path).unwrap();
    let hf = tokenizers::Tokenizer::from_file(&path).unwrap();
    assert_eq!(hf_ids(&hf, EXAMPLE), tok.encode(EXAMPLE));
    std::fs::remove_dir_all(&dir).unwrap();
}
