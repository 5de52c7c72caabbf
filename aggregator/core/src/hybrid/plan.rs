//! The cheapest mix of replicas that carries a model's load, and the order
//! in which models are served when accelerators run short.
//!
//! Each variant of a model offers replicas of a known capacity (requests a
//! second within the model's objectives, [`super::replica`]) at a known
//! cost. Starting from every variant's floor, each step adds the replica
//! that buys the capacity still needed at the lowest price: cost divided by
//! the part of its capacity that is needed. Far from the target that is
//! the variant cheapest per request; near it, a smaller replica that just
//! covers the rest can beat a bigger one that would mostly idle. With one
//! or two variants, as models usually have, this finds the cheapest mix or
//! one within a replica of it.
//!
//! Under a ceiling (replicas per accelerator type across the cluster),
//! floors are served first, then models in order of their class's priority
//! (1 first; equal priorities in the order given), each taking what it
//! needs from what the ceiling leaves.

use std::collections::BTreeMap;

/// One variant of a model, as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Requests a second one replica sustains; 0 when it cannot meet the
    /// objectives (then it only keeps its floor).
    pub per_replica: f64,
    pub cost: f64,
    pub accelerator: String,
    pub min: u32,
    pub max: Option<u32>,
}

/// The replicas chosen for each offer, and whether they carry the load.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    pub replicas: Vec<u32>,
    /// False when ceilings stopped the plan short of the load.
    pub carries: bool,
}

/// The cheapest replicas of `offers` that sustain `load` requests a second.
pub fn cheapest(offers: &[Offer], load: f64) -> Mix {
    let room = offers.iter().map(|o| o.max).collect::<Vec<_>>();
    fill(offers, load, &room)
}

/// Like [`cheapest`], with each offer's room capped by `room`.
fn fill(offers: &[Offer], load: f64, room: &[Option<u32>]) -> Mix {
    let mut replicas: Vec<u32> = offers.iter().map(|o| o.min).collect();
    let capacity = |replicas: &[u32]| {
        offers
            .iter()
            .zip(replicas)
            .map(|(o, n)| o.per_replica * f64::from(*n))
            .sum::<f64>()
    };
    loop {
        let needed = load - capacity(&replicas);
        if needed <= 0.0 {
            return Mix {
                replicas,
                carries: true,
            };
        }
        let price = |i: usize| offers[i].cost / offers[i].per_replica.min(needed);
        let next = (0..offers.len())
            .filter(|&i| offers[i].per_replica > 0.0)
            .filter(|&i| room[i].is_none_or(|max| replicas[i] < max))
            .min_by(|&a, &b| price(a).total_cmp(&price(b)));
        match next {
            Some(i) => replicas[i] += 1,
            None => {
                return Mix {
                    replicas,
                    carries: false,
                };
            }
        }
    }
}

/// One model's claim on the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// Its class's priority: 1 first.
    pub priority: u32,
    /// Requests a second to carry, headroom included.
    pub load: f64,
    pub offers: Vec<Offer>,
}

/// Plans every model; `ceilings` caps the replicas of each accelerator
/// type across all of them. Mixes are returned in the order of `claims`.
pub fn under_ceilings(claims: &[Claim], ceilings: &BTreeMap<String, u32>) -> Vec<Mix> {
    let mut left = ceilings.clone();
    // Floors come first: they run whatever the priorities.
    for offer in claims.iter().flat_map(|c| &c.offers) {
        if let Some(budget) = left.get_mut(&offer.accelerator) {
            *budget = budget.saturating_sub(offer.min);
        }
    }
    let mut order: Vec<usize> = (0..claims.len()).collect();
    order.sort_by_key(|&i| claims[i].priority);
    let mut mixes = vec![None; claims.len()];
    for i in order {
        let claim = &claims[i];
        // Everything the ceiling leaves beyond the floors, per offer.
        let room: Vec<Option<u32>> = claim
            .offers
            .iter()
            .map(|o| {
                let ceiling = left.get(&o.accelerator).map(|budget| o.min + budget);
                match (o.max, ceiling) {
                    (Some(max), Some(ceiling)) => Some(max.min(ceiling)),
                    (max, ceiling) => max.or(ceiling),
                }
            })
            .collect();
        let mix = fill(&claim.offers, claim.load, &room);
        for (offer, n) in claim.offers.iter().zip(&mix.replicas) {
            if let Some(budget) = left.get_mut(&offer.accelerator) {
                *budget = budget.saturating_sub(n - offer.min);
            }
        }
        mixes[i] = Some(mix);
    }
    mixes.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(accelerator: &str, per_replica: f64, cost: f64) -> Offer {
        Offer {
            per_replica,
            cost,
            accelerator: accelerator.into(),
            min: 0,
            max: None,
        }
    }

    #[test]
    fn the_variant_cheapest_per_request_carries_the_bulk_and_a_small_one_the_rest() {
        // H100: 10 req/s for 30; L4: 2 req/s for 10 (5 a request vs 3).
        let offers = [offer("H100", 10.0, 30.0), offer("L4", 2.0, 10.0)];
        assert_eq!(cheapest(&offers, 31.0).replicas, [3, 1]);
        // 39 req/s: a fourth H100 (30) beats five more L4s (50).
        assert_eq!(cheapest(&offers, 39.0).replicas, [4, 0]);
        assert_eq!(cheapest(&offers, 0.0).replicas, [0, 0]);
    }

    #[test]
    fn exactly_at_capacity_no_replica_is_added() {
        let offers = [offer("L4", 2.5, 10.0)];
        assert_eq!(cheapest(&offers, 10.0).replicas, [4]);
        assert_eq!(cheapest(&offers, 10.000001).replicas, [5]);
    }

    #[test]
    fn floors_are_kept_and_ceilings_respected() {
        let mut h100 = offer("H100", 10.0, 30.0);
        h100.max = Some(2);
        let mut l4 = offer("L4", 2.0, 10.0);
        l4.min = 1;
        let mix = cheapest(&[h100.clone(), l4.clone()], 31.0);
        assert_eq!(mix.replicas, [2, 6]);
        assert!(mix.carries);
        l4.max = Some(3);
        let mix = cheapest(&[h100, l4], 31.0);
        assert_eq!(mix.replicas, [2, 3]);
        assert!(!mix.carries);
    }

    #[test]
    fn an_offer_that_cannot_meet_the_objectives_keeps_only_its_floor() {
        let mut unmet = offer("T4", 0.0, 1.0);
        unmet.min = 1;
        let mix = cheapest(&[unmet, offer("L4", 2.0, 10.0)], 4.0);
        assert_eq!(mix.replicas, [1, 2]);
    }

    #[test]
    fn under_a_ceiling_higher_priority_classes_are_served_first() {
        let claim = |priority, load| Claim {
            priority,
            load,
            offers: vec![offer("L4", 1.0, 10.0)],
        };
        // Free and premium want 6 L4s each; the cluster has 8.
        let claims = [claim(10, 6.0), claim(1, 6.0)];
        let ceilings = BTreeMap::from([("L4".to_string(), 8)]);
        let mixes = under_ceilings(&claims, &ceilings);
        assert_eq!(mixes[1].replicas, [6]);
        assert!(mixes[1].carries);
        assert_eq!(mixes[0].replicas, [2]);
        assert!(!mixes[0].carries);
        // Floors run first, whatever the priority.
        let mut floored = claim(10, 6.0);
        floored.offers[0].min = 3;
        let mixes = under_ceilings(&[floored, claim(1, 6.0)], &ceilings);
        assert_eq!((mixes[0].replicas[0], mixes[1].replicas[0]), (3, 5));
        // Accelerators without a ceiling are not limited.
        let mixes = under_ceilings(&claims, &BTreeMap::new());
        assert_eq!((mixes[0].replicas[0], mixes[1].replicas[0]), (6, 6));
    }
}
