-- Cleaning only drops or rewrites documents: it never outputs more than it was given.
select * from {{ ref('stage_funnel') }}
where stage = 'cleaned' and documents_out > documents_in
