//! Order-preserving parallel map over a slice, on all cores, with per-thread state (a feature extractor, a
//! scratch buffer). The trainer's data loading, embedding and scoring all go through here.

/// Maps `f` over `items` on up to `available_parallelism()` scoped threads, one contiguous chunk each, and
/// returns the results in input order. `init` makes each thread's state. The first error (in input order
/// of the chunks) is returned; a panic in a worker is re-raised on the caller's thread (it is a bug, not an
/// input error).
pub fn map_with_state<T, S, R, E>(
    items: &[T],
    init: impl Fn() -> Result<S, E> + Sync,
    f: impl Fn(&mut S, &T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E>
where
    T: Sync,
    R: Send,
    E: Send,
{
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().max(1));
    let chunk = items.len().div_ceil(threads).max(1);
    let (init, f) = (&init, &f);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<Vec<R>, E> {
                    let mut state = init()?;
                    part.iter().map(|item| f(&mut state, item)).collect()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(items.len());
        for h in handles {
            let part = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            all.extend(part);
        }
        Ok(all)
    })
}

/// [`map_with_state`] without state.
pub fn map<T, R, E>(items: &[T], f: impl Fn(&T) -> Result<R, E> + Sync) -> Result<Vec<R>, E>
where
    T: Sync,
    R: Send,
    E: Send,
{
    map_with_state(items, || Ok(()), |_, item| f(item))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_state_per_thread() {
        let items: Vec<u32> = (0..1000).collect();
        let out: Result<Vec<(u32, usize)>, ()> = map_with_state(
            &items,
            || Ok(0usize),
            |seen, &x| {
                *seen += 1;
                Ok((x * 2, *seen))
            },
        );
        let out = out.unwrap();
        assert_eq!(
            out.iter().map(|p| p.0).collect::<Vec<_>>(),
            (0..1000).map(|x| x * 2).collect::<Vec<_>>()
        );
        // Each thread's counter restarts at 1 at its chunk's start.
        assert_eq!(out[0].1, 1);
        assert!(out.iter().all(|p| p.1 >= 1));
    }

    #[test]
    fn first_error_wins_and_empty_is_fine() {
        let items: Vec<i32> = (0..100).collect();
        let r = map(&items, |&x| if x >= 40 { Err(x) } else { Ok(x) });
        assert!(matches!(r, Err(x) if x >= 40));
        let empty: Vec<i32> = Vec::new();
        assert_eq!(map(&empty, |&x| Ok::<_, ()>(x)).unwrap(), Vec::<i32>::new());
        let r: Result<Vec<i32>, String> = map_with_state(
            &items,
            || Err("no state".to_string()),
            |_: &mut (), &x| Ok(x),
        );
        assert_eq!(r.unwrap_err(), "no state");
    }
}
