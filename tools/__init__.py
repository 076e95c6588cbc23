"""Tools run from a surefoot checkout; none of them is part of the installed library."""
