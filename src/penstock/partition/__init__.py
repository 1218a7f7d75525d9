"""Result partitions: what a producing task writes and its consumers read."""
