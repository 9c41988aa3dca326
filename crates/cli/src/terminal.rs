//! Reading a person's lines at the terminal, for both kinds of `rapport chat`.

use std::io::Write;

use tokio::io::{BufReader, Lines, Stdin};

/// What the person at the terminal did.
pub(crate) enum Input {
    /// Sent a message.
    Message(String),
    /// Asked to start over (`/reset`).
    Reset,
    /// Asked to stop (`/quit`, `/exit`, end of input).
    Quit,
}

/// Reads the next message or command, prompting with `you> ` in a terminal; blank lines are
/// skipped.
pub(crate) async fn next_input(
    lines: &mut Lines<BufReader<Stdin>>,
    interactive: bool,
) -> anyhow::Result<Input> {
    loop {
        if interactive {
            print!("you> ");
            std::io::stdout().flush()?;
        }
        let Some(line) = lines.next_line().await? else { return Ok(Input::Quit) };
        return Ok(match line.trim() {
            "" => continue,
            "/quit" | "/exit" => Input::Quit,
            "/reset" => Input::Reset,
            text => Input::Message(text.to_string()),
        });
    }
}
