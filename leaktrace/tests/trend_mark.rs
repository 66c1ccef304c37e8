//! The text report's trend mark: a group's size over the window as bars
//! scaled from zero to its largest, at most eight, the last one now.
use leaktrace::report::text::trend_mark;

#[test]
fn a_climb_a_level_group_and_too_few_samples() {
    // A leak that grew and stopped: climbs, then stays at the top.
    assert_eq!(trend_mark(&[0, 10, 20, 40, 40]).as_deref(), Some("▁▃▅██"));
    // Level: the same bar throughout.
    assert_eq!(trend_mark(&[3; 12]).as_deref(), Some("████████"));
    // Any member at all is above the floor; none is the floor.
    assert_eq!(trend_mark(&[0, 1, 100]).as_deref(), Some("▁▂█"));
    assert_eq!(trend_mark(&[0, 0]).as_deref(), Some("▁▁"));
    // Many samples: eight bars, the last one the latest sample.
    let climb: Vec<u32> = (1..=120).collect();
    let mark = trend_mark(&climb).unwrap();
    assert_eq!(mark.chars().count(), 8);
    assert!(mark.ends_with('█'));
    assert_eq!(trend_mark(&[5]), None);
    assert_eq!(trend_mark(&[]), None);
}
