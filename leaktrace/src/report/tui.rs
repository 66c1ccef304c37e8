//! `--tui`: the reports as a full-screen table for people who watch,
//! redrawn at each report — groups with count, trend mark, growth, verdict
//! in colour, state, site and cause — sortable (`s`), a group's stack and
//! reason on Enter, and `q` (or Ctrl-C) for the final report, which is
//! printed as text once the screen is given back.
//!
//! Keys are read on a thread of their own. `q` raises SIGINT in leaktrace
//! itself: the session's own Ctrl-C path then makes the final report and
//! detaches, exactly as without `--tui` (in raw mode the terminal sends no
//! signal for Ctrl-C, so the key does the same).
use std::{
    io::Write,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Result, bail};
use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState, Wrap},
};

use super::{
    labels::{created_by, verdict_name},
    model::{GroupReport, Report},
    text::{self, TextStyle, site, trend_mark},
};
use crate::aggregate::verdict::{Verdict, human_secs};

pub struct Tui {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    keys: Option<JoinHandle<()>>,
    /// How the final report is printed once the screen is restored.
    style: TextStyle,
}

struct State {
    terminal: DefaultTerminal,
    report: Option<Report>,
    table: TableState,
    sort: Sort,
    /// The selected group's stack and reason instead of the table.
    stack_view: bool,
    /// `q` was pressed: the final report is being made.
    stopping: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sort {
    /// Leaks, then suspects, then by count: the report's own order.
    Verdict,
    Count,
    Growth,
}

impl Sort {
    fn next(self) -> Self {
        match self {
            Self::Verdict => Self::Count,
            Self::Count => Self::Growth,
            Self::Growth => Self::Verdict,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Verdict => "verdict",
            Self::Count => "count",
            Self::Growth => "growth",
        }
    }
}

impl Tui {
    /// Takes over the terminal (alternate screen, raw mode) until the final
    /// report or until dropped.
    pub fn start(stacks: bool) -> Result<Self> {
        use std::io::IsTerminal;
        if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
            bail!("--tui needs a terminal on stdin and stdout; without one, use the text report");
        }
        let terminal = ratatui::try_init()?;
        let state = Arc::new(Mutex::new(State {
            terminal,
            report: None,
            table: TableState::default().with_selected(Some(0)),
            sort: Sort::Verdict,
            stack_view: false,
            stopping: false,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let keys = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("leaktrace-keys".into())
                .spawn(move || read_keys(&state, &stop))?
        };
        let mut tui = Self {
            state,
            stop,
            keys: Some(keys),
            style: TextStyle {
                color: true,
                stacks,
                trend: true,
            },
        };
        tui.redraw();
        Ok(tui)
    }

    /// A periodic report redraws the screen; the final one gives the
    /// terminal back and is printed as text.
    pub fn show(&mut self, out: &mut dyn Write, report: &Report) -> Result<()> {
        if report.is_final {
            self.finish();
            return text::write(out, report, &self.style);
        }
        lock(&self.state).report = Some(report.clone());
        self.redraw();
        Ok(())
    }

    fn redraw(&mut self) {
        let mut s = lock(&self.state);
        // Whatever else wrote to the terminal meanwhile (a command's own
        // output under -c) is wiped by a full redraw.
        let _ = s.terminal.clear();
        draw(&mut s);
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(keys) = self.keys.take() {
            let _ = keys.join();
            let _ = ratatui::try_restore();
        }
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        self.finish();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_keys(state: &Mutex<State>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // Polled, so a stop is seen within this long.
        match event::poll(Duration::from_millis(100)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        let Ok(ev) = event::read() else { return };
        let mut s = lock(state);
        match ev {
            Event::Key(k) if k.kind == KeyEventKind::Press => {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                let rows = s.report.as_ref().map_or(0, |r| r.groups.len());
                match k.code {
                    _ if ctrl_c || k.code == KeyCode::Char('q') => {
                        s.stopping = true;
                        // SAFETY: raising a signal in our own process; the
                        // session's handler turns it into the final report.
                        unsafe { libc::raise(libc::SIGINT) };
                    }
                    KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => s.stack_view = false,
                    KeyCode::Enter | KeyCode::Right if rows > 0 => s.stack_view = true,
                    KeyCode::Down | KeyCode::Char('j') if rows > 0 => {
                        let i = s.table.selected().unwrap_or(0);
                        s.table.select(Some((i + 1).min(rows - 1)));
                    }
                    KeyCode::Up | KeyCode::Char('k') => {
                        let i = s.table.selected().unwrap_or(0);
                        s.table.select(Some(i.saturating_sub(1)));
                    }
                    KeyCode::Char('s') => s.sort = s.sort.next(),
                    _ => continue,
                }
            }
            Event::Resize(..) => {}
            _ => continue,
        }
        draw(&mut s);
    }
}

/// The report's groups in the chosen order.
fn sorted(report: &Report, sort: Sort) -> Vec<&GroupReport> {
    let mut groups: Vec<&GroupReport> = report.groups.iter().collect();
    match sort {
        Sort::Verdict => {}
        Sort::Count => groups.sort_by_key(|g| std::cmp::Reverse(g.count)),
        Sort::Growth => groups.sort_by(|a, b| b.growth_per_s.total_cmp(&a.growth_per_s)),
    }
    groups
}

fn verdict_style(v: Verdict) -> Style {
    match v {
        Verdict::Leak => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Verdict::Suspect => Style::new().fg(Color::Yellow),
        Verdict::Ok => Style::new().fg(Color::Green),
    }
}

fn draw(s: &mut State) {
    let State {
        terminal,
        report,
        table,
        sort,
        stack_view,
        stopping,
    } = s;
    let _ = terminal.draw(|f| render(f, report.as_ref(), table, *sort, *stack_view, *stopping));
}

fn render(
    f: &mut Frame<'_>,
    report: Option<&Report>,
    table: &mut TableState,
    sort: Sort,
    stack_view: bool,
    stopping: bool,
) {
    let [head, body, keys] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let help = if stopping {
        "stopping: making the final report…".to_string()
    } else if stack_view {
        "Esc back · q final report".to_string()
    } else {
        format!(
            "↑↓ select · Enter stack and reason · s sort (now: {}) · q final report",
            sort.name()
        )
    };
    f.render_widget(
        Paragraph::new(help).style(Style::new().add_modifier(Modifier::REVERSED)),
        keys,
    );
    let Some(r) = report else {
        f.render_widget(
            Paragraph::new("leaktrace: attached; the first report comes after one interval"),
            head,
        );
        return;
    };
    let t = &r.target;
    let tasks = t.runtime.tasks;
    f.render_widget(
        Paragraph::new(vec![
            Line::from(vec![
                Span::styled(
                    format!("{} {tasks} live", r.live),
                    Style::new().add_modifier(Modifier::BOLD),
                ),
                Span::raw(format!(
                    " in pid {} ({} {}), {} runtime",
                    t.pid, t.exe, t.runtime_version, r.system
                )),
            ]),
            Line::raw(format!(
                "after {}: {} spawned, {} {}, {} lost{}",
                human_secs(r.elapsed_s),
                r.events.spawn,
                r.events.exit,
                t.runtime.ended,
                r.events.lost,
                if r.groups_omitted > 0 {
                    format!(
                        "; {} more groups not shown (--top, --older)",
                        r.groups_omitted
                    )
                } else {
                    String::new()
                }
            )),
        ]),
        head,
    );
    let groups = sorted(r, sort);
    if let Some(i) = table.selected()
        && i >= groups.len()
    {
        table.select(Some(groups.len().saturating_sub(1)));
    }
    let selected = table.selected().and_then(|i| groups.get(i).copied());
    match selected {
        Some(g) if stack_view => render_stack(f, body, g, t.runtime.tasks),
        _ => render_table(f, body, &groups, table),
    }
}

fn render_table(
    f: &mut Frame<'_>,
    area: ratatui::layout::Rect,
    groups: &[&GroupReport],
    table: &mut TableState,
) {
    let rows = groups.iter().map(|g| {
        let blocked = g
            .blocked_s
            .map(|b| human_secs(b.max))
            .unwrap_or_else(|| "-".into());
        let at = g
            .blocked_at
            .as_ref()
            .map(|b| format!(", in {}", site(b)))
            .unwrap_or_default();
        Row::new(vec![
            Cell::from(format!("{:>7}", g.count)),
            Cell::from(trend_mark(&g.trend).unwrap_or_default()),
            Cell::from(format!("{:+.1}/s", g.growth_per_s)),
            Cell::from(verdict_name(g.verdict)).style(verdict_style(g.verdict)),
            Cell::from(g.state.clone()),
            Cell::from(blocked),
            Cell::from(g.cause.unwrap_or("")),
            Cell::from(format!("{}{at}", created_by(g))),
        ])
    });
    let header = Row::new([
        "  count",
        "trend",
        "growth",
        "verdict",
        "state",
        "blocked",
        "cause",
        "created by, in",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let widget = Table::new(
        rows,
        [
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(14),
            Constraint::Length(7),
            Constraint::Length(22),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .block(Block::new().borders(Borders::TOP))
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(widget, area, table);
}

fn render_stack(f: &mut Frame<'_>, area: ratatui::layout::Rect, g: &GroupReport, tasks: &str) {
    let mut lines = vec![
        Line::from(vec![
            Span::styled(
                format!("{} {tasks}  {}  ", g.count, g.state),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::styled(verdict_name(g.verdict), verdict_style(g.verdict)),
        ]),
        Line::raw(format!("created by {}", created_by(g))),
    ];
    if let Some(at) = &g.blocked_at {
        lines.push(Line::raw(format!("blocked in {}", site(at))));
    }
    lines.push(Line::raw(""));
    lines.push(Line::raw(g.why.clone()));
    if let Some(ch) = g.channels.as_ref().filter(|c| !c.summary.is_empty()) {
        lines.push(Line::raw(format!("channels: {}", ch.summary)));
    }
    if let (Some(cause), Some(fix)) = (g.cause, g.fix) {
        lines.push(Line::raw(format!("cause: {cause} — fix: {fix}")));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "stack (innermost first):",
        Style::new().add_modifier(Modifier::BOLD),
    ));
    for fr in &g.stack {
        lines.push(Line::raw(format!("  {}", fr.function)));
        if !fr.file.is_empty() {
            lines.push(Line::raw(format!("      {}:{}", fr.file, fr.line)));
        }
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::new().borders(Borders::TOP)),
        area,
    );
}
