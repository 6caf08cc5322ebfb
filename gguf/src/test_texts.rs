//! Texts that stress tokenizers, for the tests of every engine: deterministic for a seed.
//!
//! - [`special_heavy`]: special-token texts of several model families (plain text where a
//!   vocabulary lacks them) between short pieces of text, whitespace, runs of newlines,
//!   spaces and tabs (which Gemma's vocabulary has tokens for), and near-misses.
//! - [`random_word`]: one long run of characters drawn from an alphabet (a single
//!   pre-token for GPT-2 style splits when the alphabet is letters).

/// A xorshift64 generator: the same numbers on every machine.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// `turns` special-token texts, each followed by up to two pieces of text.
pub fn special_heavy(turns: usize, seed: u64) -> String {
    const SPECIAL: [&str; 16] = [
        "<|im_start|>",
        "<|im_end|>",
        "<s>",
        "</s>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<bos>",
        "<eos>",
        "<unk>",
        "<|user|>",
        "<|assistant|>",
        "<|end|>",
        "<|endoftext|>",
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|start_header_id|>",
    ];
    const TEXT: [&str; 16] = [
        "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
        "\t\t\t    \t        \n",
        "user\n",
        "model\n",
        "Hello world",
        " the café is open",
        "  ",
        "\n\n",
        " ",
        "日本語の文",
        " 🙂",
        "fn main() { x <| y |> z }",
        "<",
        "|>",
        "<start_of",
        "turn>",
    ];
    let mut rng = XorShift(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
    let mut s = String::new();
    for _ in 0..turns {
        s.push_str(SPECIAL[rng.below(SPECIAL.len())]);
        for _ in 0..rng.below(3) {
            s.push_str(TEXT[rng.below(TEXT.len())]);
        }
    }
    s
}

/// `n` characters drawn from `alphabet` (which must not be empty).
pub fn random_word(alphabet: &str, n: usize, seed: u64) -> String {
    let chars: Vec<char> = alphabet.chars().collect();
    let mut rng = XorShift(seed.wrapping_add(0x2545_f491_4f6c_dd1d));
    (0..n).map(|_| chars[rng.below(chars.len())]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_deterministic_and_as_long_as_asked() {
        assert_eq!(special_heavy(100, 1), special_heavy(100, 1));
        assert_ne!(special_heavy(100, 1), special_heavy(100, 2));
        let w = random_word("ab", 1000, 3);
        assert_eq!(w.chars().count(), 1000);
        assert!(w.contains('a') && w.contains('b'));
    }
}
