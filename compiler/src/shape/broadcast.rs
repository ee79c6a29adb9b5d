//! Numpy-style multidirectional broadcasting over symbolic dims.

use crate::ir::{Dim, DimValue};

/// Broadcasts two dims: `1` takes the other side, equal values or names match, a known
/// size other than 1 wins over a name or an unknown (the other side must be it or 1).
/// Two different names give an unknown dim; two different sizes (neither 1) are an error.
pub fn broadcast_dim(a: &Dim, b: &Dim) -> Result<Dim, String> {
    use DimValue::{Known, Symbol, Unknown};
    Ok(match (&a.value, &b.value) {
        (Known(1), _) => b.clone(),
        (_, Known(1)) => a.clone(),
        (Known(x), Known(y)) if x == y => a.clone(),
        (Known(x), Known(y)) => return Err(format!("cannot broadcast {x} with {y}")),
        (Known(_), _) => a.clone(),
        (_, Known(_)) => b.clone(),
        (Symbol(x), Symbol(y)) if x == y => a.clone(),
        (Symbol(_) | Unknown, Symbol(_) | Unknown) => Dim::unknown(),
    })
}

/// Broadcasts any number of shapes (right-aligned).
pub fn broadcast_shapes(shapes: &[&[Dim]]) -> Result<Vec<Dim>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![Dim::known(1); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            out[off + i] = broadcast_dim(&out[off + i], d)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts_symbols_and_ones() {
        let a = [Dim::symbol("batch"), Dim::known(1), Dim::known(4)];
        let b = [Dim::symbol("seq"), Dim::known(4)];
        let r = broadcast_shapes(&[&a, &b]).unwrap();
        assert_eq!(r, vec![Dim::symbol("batch"), Dim::symbol("seq"), Dim::known(4)]);
        let c = [Dim::symbol("batch"), Dim::symbol("seq"), Dim::known(1)];
        let r = broadcast_shapes(&[&a, &c]).unwrap();
        assert_eq!(r, vec![Dim::symbol("batch"), Dim::symbol("seq"), Dim::known(4)]);
        // Different names: unknown; a number beats a name.
        assert_eq!(broadcast_dim(&Dim::symbol("a"), &Dim::symbol("b")).unwrap(), Dim::unknown());
        assert_eq!(broadcast_dim(&Dim::symbol("a"), &Dim::known(3)).unwrap(), Dim::known(3));
        assert_eq!(broadcast_dim(&Dim::unknown(), &Dim::unknown()).unwrap(), Dim::unknown());
        assert!(broadcast_shapes(&[&[Dim::known(2)], &[Dim::known(3)]]).is_err());
        assert_eq!(broadcast_shapes(&[]).unwrap(), Vec::<Dim>::new());
    }
}
