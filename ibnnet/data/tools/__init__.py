"""Commands' work on datasets: `data check`, `data shrink`, `data stylize`, `data corrupt`."""
