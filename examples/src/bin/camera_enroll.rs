//! camera-enroll: teach a k-NN head new classes from a few camera frames.
//!
//! Commands come one per line on stdin (a keypad or GPIO daemon can write
//! them to a pipe):
//!
//! ```text
//! enrol CLASS    the next --shots frames become examples of CLASS
//! forget CLASS   remove CLASS and its examples
//! save           write the head to --head (it is reloaded on the next start)
//! quit           stop
//! ```
//!
//! Commands run in order: while a class is being enrolled, the next command
//! waits until its shots are taken.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use edgeclr::embed::embed_images;
use edgeclr::probe::KnnHead;
use edgeclr::Preprocessor;
use edgeclr_examples::cli::next_frame;
use edgeclr_examples::display::ScreenState;
use edgeclr_examples::heads::knn_top;
use edgeclr_examples::{CommonArgs, FpsMeter, Screen};

/// Few-shot enrolment of new classes into a k-NN head, from stdin commands.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "stdin commands: enrol CLASS | forget CLASS | save | quit"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The k-NN head: loaded if it exists, written by `save`.
    #[arg(long, value_name = "HEAD.json")]
    head: PathBuf,
    /// Frames taken per `enrol` command.
    #[arg(long, default_value_t = 5)]
    shots: usize,
    /// Neighbours that vote (for a new head).
    #[arg(short = 'k', long, default_value_t = 3)]
    k: usize,
    /// How many classes to list.
    #[arg(long, default_value_t = 4)]
    top: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Enrol(String),
    Forget(String),
    Save,
    Quit,
}

fn parse(line: &str) -> Result<Option<Command>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let class = rest.trim();
    let need_class = |c: &str| -> Result<String> {
        if c.is_empty() {
            bail!("'{verb}' needs a class name");
        }
        Ok(c.to_owned())
    };
    Ok(Some(match verb {
        "enrol" | "enroll" => Command::Enrol(need_class(class)?),
        "forget" => Command::Forget(need_class(class)?),
        "save" => Command::Save,
        "quit" | "exit" => Command::Quit,
        other => bail!("unknown command '{other}' (enrol CLASS, forget CLASS, save, quit)"),
    }))
}

/// Reads stdin on its own thread so the camera never waits for a keypress.
fn spawn_stdin_reader() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn summary(head: &KnnHead) -> String {
    let counts = head.keys_per_class();
    if head.classes().is_empty() {
        return "no classes: enrol some".into();
    }
    let parts: Vec<String> = head
        .classes()
        .iter()
        .zip(counts)
        .map(|(c, n)| format!("{c}({n})"))
        .collect();
    parts.join(" ")
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Started first, so commands piped in are queued before the first frame.
    let commands = spawn_stdin_reader();
    let c = &args.common;
    let manifest = c.manifest()?;
    let mut encoder = c.load_encoder(&manifest, true)?;
    let preprocessor = Preprocessor::new(&manifest);
    let dim = manifest.outputs.embedding_dim;
    let mut head = if args.head.exists() {
        let head = KnnHead::load(&args.head)
            .with_context(|| format!("loading the k-NN head {}", args.head.display()))?;
        eprintln!("loaded {}: {}", args.head.display(), summary(&head));
        head
    } else {
        KnnHead::new(dim, args.k.max(1))?
    };
    if args.shots == 0 {
        bail!("--shots must be at least 1");
    }
    let mut source = c.open_source()?;
    let mut screen = Screen::open(c)?;
    let mut fps = FpsMeter::new();
    let mut pending: VecDeque<Command> = VecDeque::new();
    // (class, shots taken so far)
    let mut enrolling: Option<(String, usize)> = None;
    let mut message = String::new();
    let mut n = 0u64;
    'frames: while !c.done(n) {
        while let Ok(line) = commands.try_recv() {
            match parse(&line) {
                Ok(Some(cmd)) => pending.push_back(cmd),
                Ok(None) => {}
                Err(e) => eprintln!("warning: {e}"),
            }
        }
        while enrolling.is_none() {
            let Some(cmd) = pending.pop_front() else {
                break;
            };
            match cmd {
                Command::Enrol(class) => {
                    eprintln!("enrolling '{class}' from the next {} frames", args.shots);
                    enrolling = Some((class, 0));
                }
                Command::Forget(class) => match head.forget(&class) {
                    Ok(removed) => {
                        message = format!("forgot {class}");
                        eprintln!("forgot '{class}' ({removed} examples)");
                    }
                    Err(e) => eprintln!("warning: {e}"),
                },
                Command::Save => {
                    head.save(&args.head)
                        .with_context(|| format!("saving {}", args.head.display()))?;
                    message = "saved".into();
                    println!("saved {}: {}", args.head.display(), summary(&head));
                }
                Command::Quit => break 'frames,
            }
        }
        let frame = next_frame(&mut *source, c.retry_secs)?;
        let emb =
            embed_images(&mut *encoder, &preprocessor, std::slice::from_ref(&frame))?.embedding;
        if let Some((class, taken)) = enrolling.as_mut() {
            head.enroll(class, emb.view())?;
            *taken += 1;
            message = format!("enrol {class} {taken}/{}", args.shots);
            if *taken >= args.shots {
                eprintln!("enrolled '{class}': {}", summary(&head));
                enrolling = None;
            }
        }
        let top = knn_top(&head, emb.view(), args.top.max(1))?;
        let (label, conf) = top.first().map_or(("-", 0.0), |(l, p)| (l.as_str(), *p));
        println!("frame {n}: {label} {:.0}%", conf * 100.0);
        let status = if message.is_empty() {
            summary(&head)
        } else {
            format!("{message}\n{}", summary(&head))
        };
        let state = ScreenState {
            title: "enrol".into(),
            frame: Some(frame),
            fps: fps.tick(),
            status,
            top,
            ..ScreenState::default()
        };
        screen.show(&state)?;
        n += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse("enrol cat").unwrap(),
            Some(Command::Enrol("cat".into()))
        );
        assert_eq!(
            parse("  enroll  red mug ").unwrap(),
            Some(Command::Enrol("red mug".into()))
        );
        assert_eq!(
            parse("forget cat").unwrap(),
            Some(Command::Forget("cat".into()))
        );
        assert_eq!(parse("save").unwrap(), Some(Command::Save));
        assert_eq!(parse("# note").unwrap(), None);
        assert!(parse("enrol").is_err());
        assert!(parse("dance").is_err());
    }
}
