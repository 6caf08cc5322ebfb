//! The English text the BPE vocabulary is trained on. It mixes prose, dialogue, code,
//! numbers, punctuation and some non-ASCII text so that the learned merges cover the
//! usual kinds of input and multi-byte UTF-8 tokens occur.

/// The training corpus (about 9 KB).
pub(crate) const CORPUS: &str = r#"The quick brown fox jumps over the lazy dog. The dog did not seem to mind, and the fox ran on into the forest.
Once upon a time, in a small town by the sea, there lived an old man who repaired clocks. Every morning he opened his shop at seven o'clock, and every evening he closed it at six. People came from the nearby villages with their broken watches, and he never turned anyone away.
"What time is it?" asked the little girl. "It's a quarter past three," he answered, "but that clock is always five minutes late." She laughed, and he smiled at her.
In the beginning the universe was created. This has made a lot of people very angry and has been widely regarded as a bad move.
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.
We hold these truths to be self-evident, that all men are created equal, that they are endowed with certain unalienable rights, that among these are life, liberty and the pursuit of happiness.
A language model reads a sequence of tokens and predicts the next one. Tokens are pieces of words: common words become a single token, while rare words are split into several smaller pieces. The tokenizer learns these pieces from a corpus of text by merging the most frequent pairs of symbols, again and again, until the vocabulary reaches the size it should have.
The weather today will be sunny in the morning with clouds in the afternoon. Temperatures will reach 24 degrees, falling to 12 degrees at night. There is a 30% chance of rain on Thursday and Friday.
Ingredients: 2 cups of flour, 1 teaspoon of salt, 3 eggs, 250 ml of milk and 50 g of butter. Mix the flour and the salt, then add the eggs one at a time. Pour in the milk slowly while you stir, and let the batter rest for 30 minutes before you cook the pancakes.
She sat in the café on the corner, reading a naïve novel about a façade of good manners, while the waiter brought her a crème brûlée. Her résumé lay on the table next to her coffee. "Déjà vu," she said to nobody in particular.
In Tokyo the signs read 東京 and 日本語, and the train announcements are made in Japanese and English. In Berlin you might hear "Grüß Gott" or "schön", in Madrid "¿Dónde está la estación?" and "mañana", in Moscow "Привет, как дела?" and in Athens "Καλημέρα". Prices are shown in €, £, ¥ and $; the temperature is 21 °C. Some people write emoji like 🙂 and 🚀 in their messages.
def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

if __name__ == "__main__":
    for i in range(10):
        print(f"fib({i}) = {fibonacci(i)}")

fn main() {
    let numbers = vec![1, 2, 3, 4, 5];
    let sum: i32 = numbers.iter().map(|x| x * x).sum();
    println!("The sum of squares is {}", sum);
    if sum > 50 {
        eprintln!("warning: the sum is large");
    }
}

#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        printf("%d: %s\n", i, argv[i]);
    }
    return 0;
}

const response = await fetch("https://example.com/api/v1/items?limit=20&offset=40");
const data = await response.json();
console.log(`Loaded ${data.items.length} items in ${Date.now() - start} ms`);

SELECT name, COUNT(*) AS total FROM orders WHERE created_at >= '2024-01-01' GROUP BY name ORDER BY total DESC LIMIT 10;
{"model": "llama", "temperature": 0.7, "max_tokens": 256, "stop": ["</s>", "\n\n"], "stream": true}
<html><head><title>Hello, world!</title></head><body><p class="intro">Welcome to the page.</p></body></html>
$ cargo build --release && ./target/release/corral serve --port 11434
The meeting is scheduled for Monday, March 3rd, 2025, at 10:30 AM. Please bring the report (pages 12-48) and your notes. Call +1 (555) 010-4477 or write to info@example.org if you can't attend.
Version 1.2.3 fixed 17 bugs; version 2.0.0 added 5 new features and removed 3 old ones. The total cost was $1,234.56, or about 1.1e3 dollars after the 10% discount.
Mathematics: 2 + 2 = 4, 3 * 7 = 21, 10 / 4 = 2.5, and the square root of 144 is 12. π is roughly 3.14159, e is about 2.71828, and x² + y² = r² describes a circle.
Q: Why did the chicken cross the road? A: To get to the other side! Q: What do you call a bear with no teeth? A: A gummy bear.
User: Can you help me write a short poem about the ocean?
Assistant: Of course! Here is a short poem:
The ocean hums a quiet song,
of tides that pull the whole day long;
it keeps the secrets of the deep,
and rocks the sleepy ships to sleep.
User: Thank you, that's lovely. Can you make it rhyme differently?
Assistant: Sure. Let me try another version for you.
The history of computing began long before electronic computers. People used the abacus, then mechanical calculators, and in the nineteenth century Charles Babbage designed the analytical engine. Ada Lovelace wrote what many consider to be the first computer program. In the twentieth century, machines grew from rooms full of vacuum tubes to chips with billions of transistors.
Science is a way of thinking much more than it is a body of knowledge. Its goal is to find out how the world works, to seek what regularities there may be, to penetrate to the connections of things.
I think, therefore I am. To be, or not to be: that is the question. All that glitters is not gold. Knowledge is power. Time is money. Actions speak louder than words.
The children played in the garden until the sun went down, and then their mother called them inside for dinner. They washed their hands, sat at the table, and talked about everything they had seen: a bird's nest, a frog by the pond, and a kite that had been stuck in the old oak tree.
Error: file not found (code 404). Warning: disk usage at 95%! Info: 3 of 4 tasks completed; retrying in 5s... Done.
TODO: fix the parser -- it fails on inputs like "a,b;;c" and 'x=>y'. See issue #1234 & PR #5678 for details.
    "#;
